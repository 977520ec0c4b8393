"""The whole system at work: GRPO on a small policy, rewarded by the running GRM service.

1. A policy is built from nothing (a small Llama on the bundled GRM's SentencePiece
   tokenizer) and fine-tuned on the task generator's candidate answers, most of which miss
   a constraint: it learns the format but passes all of a query's rules only sometimes.
2. The reward service starts on the bundled GRM with a Redis cache (a private
   ``redis-server`` on a free port, when one is installed; otherwise ``--target`` an
   existing service or fall back to the in-memory cache, which is said out loud).
3. GRPO trains the policy against the service. Each step's groups go to the service in one
   ``ScoreBatch`` call; the GRM writes principles and critiques and scores every group.
4. The *true* pass rate (every constraint of the query met, checked by the task rules,
   never by the GRM) is measured on held-out queries before, during and after. The plot
   shows GRM reward and true pass rate per step: if the two part ways, the policy is
   fooling the judge (reward hacking).

Run it::

    grm grpo-demo --out runs/grpo-demo            # about 15 minutes on 2 CPU cores
    grm grpo-demo --quick --out /tmp/demo         # a smoke run: a few steps, minutes

Writes ``metrics.jsonl`` (one record per step), ``summary.json`` and ``grpo_demo.png``.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import grm.defaults as defaults
from grm.default_model import default_model_path
from grm.engine import GenerationRequest
from grm.judge import GenerativeRewardModel
from grm.tasks import Task, generate_tasks, true_score
from grm.transformers_engine import TransformersEngine
from policy.logprobs import Example
from policy.model import ModelSize, build_model
from policy.rewards import ServiceReward
from policy.sft import SFTConfig, train_sft
from policy.trainer import GRPOConfig, GRPOTrainer, Rollouts, policy_prompt_ids
from services.cache import MemoryCache, RedisCache
from services.server import BackgroundServer, ServerConfig

POLICY_SIZE = ModelSize(hidden=192, layers=4, heads=4, intermediate=512, max_positions=256)


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings (``grm grpo-demo`` has a flag for each)."""

    out: str = "runs/grpo-demo"  # output folder
    target: str | None = None  # a running service (host:port) instead of starting one
    steps: int = 120  # GRPO steps
    sft_steps: int = 500  # fine-tuning steps before GRPO
    prompts_per_step: int = 8
    group_size: int = 4
    k: int = 2  # GRM judgments per input
    grouped: bool = False  # judge a prompt's whole group as one input instead of each completion alone
    lr: float = 3e-4
    beta: float = 0.02
    eval_queries: int = 200  # held-out queries per evaluation
    eval_every: int = 20
    seed: int = 0
    quick: bool = False  # a smoke run: few steps, small evaluations

    def __post_init__(self) -> None:
        for name in ("steps", "sft_steps", "prompts_per_step", "group_size", "k", "eval_queries", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"DemoConfig.{name} must be >= 1, got {getattr(self, name)}")

    def resolved(self) -> "DemoConfig":
        """With ``quick``, the smoke run's sizes in place of the full ones."""
        if not self.quick:
            return self
        return replace(self, steps=2, sft_steps=30, eval_queries=8, eval_every=1,
                       prompts_per_step=min(self.prompts_per_step, 4))


def run(args: DemoConfig) -> int:
    args = args.resolved()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    torch.manual_seed(args.seed)
    started = time.monotonic()

    tokenizer = _tokenizer()
    policy = build_model(tokenizer, POLICY_SIZE, seed=args.seed)
    train = generate_tasks(4000 if not args.quick else 400, args.seed, "train", num_responses=3)
    held_out = generate_tasks(args.eval_queries, args.seed, "validation")
    print(f"policy: {sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M parameters; "
          f"fine-tuning {args.sft_steps} steps on the generator's answers")
    train_sft(policy, _sft_batches(tokenizer, train, args.seed),
              SFTConfig(steps=args.sft_steps, lr=2e-3, warmup=20), desc="policy sft")
    evals = [{"step": 0, **true_pass_rate(policy, tokenizer, held_out, seed=args.seed)}]
    print(f"before GRPO: true pass rate {evals[0]['pass_rate']:.1%} on {len(held_out)} held-out queries")

    tasks = {t.query: t for t in train}
    cfg = GRPOConfig(steps=args.steps, prompts_per_step=args.prompts_per_step, group_size=args.group_size,
                     lr=args.lr, beta=args.beta, max_new_tokens=32, seed=args.seed, output_dir=str(out))

    def metrics(rollouts: Rollouts) -> dict:
        record = rollout_truth(rollouts, tasks)
        trainer_step = len(trainer.history) + 1
        if trainer_step % args.eval_every == 0 or trainer_step == args.steps:
            evals.append({"step": trainer_step, **true_pass_rate(policy, tokenizer, held_out, seed=args.seed)})
            record["held_out_pass_rate"] = evals[-1]["pass_rate"]
        return record

    with _service(args) as (target, cache):
        reward = ServiceReward(target, k=args.k, temperature=defaults.TEMPERATURE, max_new_tokens=400, seed=args.seed,
                               per_response=not args.grouped, max_wait_s=300)
        print(f"reward: the GRM service at {target} (cache: {cache}), k={args.k}")
        trainer = GRPOTrainer(policy, tokenizer, reward, list(tasks), cfg, metrics_fn=metrics)
        trainer.train()
        reward.close()

    summary = {
        "pass_rate_before": evals[0]["pass_rate"], "pass_rate_after": evals[-1]["pass_rate"],
        "true_score_before": evals[0]["true_score"], "true_score_after": evals[-1]["true_score"],
        "held_out_queries": len(held_out), "samples_per_query": 4, "steps": args.steps,
        "wall_time_s": round(time.monotonic() - started, 1), "cache": cache, "k": args.k,
        "group_size": args.group_size, "grouped": args.grouped,
        "judge_agreement": _mean(h["judge_agreement"] for h in trainer.history),
        "mean_reward_first_10": _mean(h["reward"] for h in trainer.history[:10]),
        "mean_reward_last_10": _mean(h["reward"] for h in trainer.history[-10:]),
        "evaluations": evals,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(trainer.history, evals, out / "grpo_demo.png")
    print(f"true pass rate {summary['pass_rate_before']:.1%} -> {summary['pass_rate_after']:.1%} "
          f"after {args.steps} steps; {summary['wall_time_s'] / 60:.1f} min; plot {out / 'grpo_demo.png'}")
    return 0


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_path())


def _sft_batches(tokenizer, tasks: Sequence[Task], seed: int, batch_size: int = 32) -> Iterator[list[Example]]:
    """Each example: a query and one of its candidate answers, drawn at random."""
    rng = random.Random(f"policy-sft:{seed}")
    prompts = {t.query: policy_prompt_ids(tokenizer, t.query) for t in tasks}
    eos = tokenizer.eos_token_id
    while True:
        batch = rng.sample(tasks, batch_size)
        yield [Example(prompts[t.query], tuple(tokenizer(rng.choice(t.responses), add_special_tokens=False)
                                               ["input_ids"]) + (eos,)) for t in batch]


def _passes(task: Task, text: str) -> bool:
    return all(c.check(text) for c in task.constraints)


def rollout_truth(rollouts: Rollouts, tasks: dict[str, Task]) -> dict:
    """The rules' verdict on a step's rollouts: the share passing every constraint, the mean
    true score, and how often the GRM ordered two completions of a group as the rules do
    (over pairs whose true scores differ; a tie in reward counts half)."""
    group = len(rollouts.completions) // len(rollouts.prompts)
    rows = [(tasks[rollouts.prompts[i // group]], c.text, r)
            for i, (c, r) in enumerate(zip(rollouts.completions, rollouts.rewards))]
    truth = [true_score(t.constraints, x) for t, x, _ in rows]
    agree = pairs = 0.0
    for start in range(0, len(rows), group):
        for a in range(start, start + group):
            for b in range(a + 1, start + group):
                ra, rb = rows[a][2], rows[b][2]
                if truth[a] == truth[b] or ra is None or rb is None:
                    continue
                pairs += 1
                agree += 0.5 if ra == rb else float((ra > rb) == (truth[a] > truth[b]))
    return {"true_pass_rate": sum(_passes(t, x) for t, x, _ in rows) / len(rows),
            "true_score": sum(truth) / len(truth),
            "judge_agreement": agree / pairs if pairs else None}


@torch.no_grad()
def true_pass_rate(model, tokenizer, tasks: Sequence[Task], seed: int, samples: int = 4,
                   temperature: float = 1.0) -> dict:
    """Sample ``samples`` answers per held-out query (as in training) and check them by the rules."""
    model.eval()
    engine = TransformersEngine(model, tokenizer, model_id="policy")
    requests = [GenerationRequest(policy_prompt_ids(tokenizer, t.query), n=samples, temperature=temperature,
                                  max_new_tokens=32, seed=seed * 7919 + i) for i, t in enumerate(tasks)]
    outputs = engine.generate(requests)
    texts = [(t, c.text) for t, group in zip(tasks, outputs) for c in group]
    return {"pass_rate": sum(_passes(t, x) for t, x in texts) / len(texts),
            "true_score": sum(true_score(t.constraints, x) for t, x in texts) / len(texts)}


@contextlib.contextmanager
def _service(args: DemoConfig) -> Iterator[tuple[str, str]]:
    """(target, cache description): the given service, or one started here on the bundled GRM."""
    if args.target:
        yield args.target, "the service's own"
        return
    judge = GenerativeRewardModel.load(str(default_model_path()))
    with _redis() as url:
        factory = (lambda: RedisCache(url, timeout_s=0.5)) if url else MemoryCache
        cache = f"redis {url}" if url else "in-memory (no redis-server installed)"
        with BackgroundServer(judge, "127.0.0.1:0", ServerConfig(metrics_port=None), cache_factory=factory) as srv:
            yield srv.address, cache


@contextlib.contextmanager
def _redis() -> Iterator[str | None]:
    """A private redis-server on a free port (no persistence), or None when none is installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", workdir],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {port}")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def plot(history: Sequence[dict], evals: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, left = plt.subplots(figsize=(7.5, 4.2))
    left.plot(steps, [h["reward"] for h in history], color="tab:blue", alpha=0.45, label="GRM reward (rollouts)")
    left.plot(steps, _smooth([h["reward"] for h in history]), color="tab:blue", label="GRM reward, 5-step mean")
    left.set_xlabel("GRPO step")
    left.set_ylabel("GRM reward (mean score 1-10)", color="tab:blue")
    right = left.twinx()
    right.plot(steps, [h["true_pass_rate"] for h in history], color="tab:green", alpha=0.35,
               label="true pass rate (rollouts)")
    right.plot([e["step"] for e in evals], [e["pass_rate"] for e in evals], "o-", color="tab:green",
               label="true pass rate (held-out)")
    right.set_ylabel("true pass rate (task rules)", color="tab:green")
    top = max([h["true_pass_rate"] for h in history] + [e["pass_rate"] for e in evals])
    right.set_ylim(0, min(1.0, max(0.2, 1.25 * top)))
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize=8)
    left.set_title("GRPO against the GRM service: judge's reward vs the rules' verdict")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def _smooth(values: Sequence[float | None], width: int = 5) -> list[float | None]:
    out = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - width + 1):i + 1] if v is not None]
        out.append(sum(window) / len(window) if window else None)
    return out
