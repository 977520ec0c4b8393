"""GRPO for any Hugging Face causal LM, with rewards from a reward backend (usually the service).

One step, top to bottom (``GRPOTrainer.step``):

1. draw ``prompts_per_step`` prompts;
2. sample ``group_size`` completions per prompt from the current policy (each prompt is
   prefilled once, its samples decode from that cache; ``grm.transformers_engine``);
3. score the whole step in one call to the reward backend (``policy.rewards``);
4. group-relative advantages (GRPO, or Dr. GRPO without the std); an unscorable
   completion is left out of its group's baseline and gets advantage 0, a group whose
   rewards are all equal gets 0 everywhere (``filter_groups`` drops such groups from the
   loss altogether, DAPO's dynamic sampling);
5. ``num_iterations`` optimizer steps over the rollouts, in micro-batches: clipped
   surrogate (separate low and high bounds: clip-higher), plus ``beta`` times the k3 KL to
   a frozen copy of the starting policy; loss aggregated per token, per sequence or by a
   constant (``policy.grpo``);
6. a JSONL record per step (rewards, unscored count, KL, clipping, lengths, times, and
   whatever ``metrics_fn`` measures on the rollouts) and checkpoints.

Example::

    model, tokenizer = AutoModelForCausalLM.from_pretrained(p), AutoTokenizer.from_pretrained(p)
    reward = ServiceReward("127.0.0.1:50051", k=4)
    history = GRPOTrainer(model, tokenizer, reward, prompts, GRPOConfig(steps=50)).train()

``grm grpo --model PATH --prompts prompts.jsonl --target HOST:PORT`` runs it from the
command line (``grm_cli/grpo.py``).
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from grm.engine import GenerationRequest
from grm.transformers_engine import TransformersEngine
from grm.types import Completion, Conversation
from policy.config import GRPOConfig
from policy.grpo import LossMode, filter_degenerate_groups, group_advantages, grpo_loss
from policy.logprobs import Example, batch_logprobs, target_ids
from policy.rewards import RewardBackend

log = logging.getLogger(__name__)


@dataclass
class Rollouts:
    """One step's samples, grouped: ``completions[i * G + j]`` is sample j of ``prompts[i]``."""

    prompts: list[Conversation]
    prompt_ids: list[tuple[int, ...]]
    completions: list[Completion]
    rewards: list[float | None] = field(default_factory=list)

    def groups(self, group_size: int) -> list[list[str]]:
        texts = [c.text for c in self.completions]
        return [texts[i:i + group_size] for i in range(0, len(texts), group_size)]


def policy_prompt_ids(tokenizer, prompt: Conversation) -> tuple[int, ...]:
    """The policy's input ids: the chat template with a generation prompt when the tokenizer
    has one, else the user text followed by a newline. The prompt is trusted text, so any
    special-token strings in it stay special (unlike the judge's ``grm.prompts.encode_prompt``,
    which keeps them plain text)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [
        m if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in prompt]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    return tuple(tokenizer("\n".join(m["content"] for m in messages) + "\n")["input_ids"])


class GRPOTrainer:
    """Trains ``model`` in place; ``train()`` returns the per-step records."""

    def __init__(self, model, tokenizer, reward: RewardBackend, prompts: Sequence[Conversation],
                 cfg: GRPOConfig = GRPOConfig(), *,
                 metrics_fn: Callable[[Rollouts], dict[str, float]] | None = None):
        if not prompts:
            raise ValueError("prompts is empty")
        self.model, self.tokenizer, self.reward, self.cfg = model, tokenizer, reward, cfg
        self.prompts = list(prompts)
        self.metrics_fn = metrics_fn
        self.engine = TransformersEngine(model, tokenizer, model_id="policy")
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else min(self.engine.eos_token_ids)
        self.reference = copy.deepcopy(model).eval().requires_grad_(False) if cfg.beta else None
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = random.Random(f"grpo:{cfg.seed}")
        self.history: list[dict] = []
        self.out = Path(cfg.output_dir) if cfg.output_dir else None
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")

    def train(self) -> list[dict]:
        cfg = self.cfg
        bar = tqdm(range(cfg.steps), desc="grpo", mininterval=2)
        for step in bar:
            record = self.step(step)
            bar.set_postfix({k: f"{record[k]:.3g}" for k in ("reward", "kl") if record.get(k) is not None})
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                self.save(self.out / f"step-{step + 1}" if self.out else None)
        self.save(self.out / "final" if self.out else None)
        return self.history

    def step(self, step: int) -> dict:
        cfg, t0 = self.cfg, time.perf_counter()
        rollouts = self.rollout(self.rng.sample(self.prompts, min(cfg.prompts_per_step, len(self.prompts))),
                                seed=cfg.seed * 1_000_003 + step)
        t1 = time.perf_counter()
        scored = self.reward.score_groups(rollouts.prompts, rollouts.groups(cfg.group_size))
        rollouts.rewards = [r for group in scored for r in group]
        if len(rollouts.rewards) != len(rollouts.completions):
            raise RuntimeError(f"reward backend {self.reward.name} returned {len(rollouts.rewards)} rewards "
                               f"for {len(rollouts.completions)} completions")
        t2 = time.perf_counter()
        advantages = group_advantages(rollouts.rewards, cfg.group_size, cfg.advantage)
        keep = self._rows_to_train(rollouts.rewards)
        stats = self.optimize([Example(rollouts.prompt_ids[i // cfg.group_size],
                                       target_ids(rollouts.completions[i], self.eos)) for i in keep],
                              advantages[keep])
        record = self._record(step, rollouts, len(keep), stats, (t1 - t0, t2 - t1, time.perf_counter() - t2))
        self.history.append(record)
        if self.out:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        return record

    @torch.no_grad()
    def rollout(self, prompts: Sequence[Conversation], seed: int) -> Rollouts:
        """``group_size`` samples per prompt from the current policy."""
        cfg = self.cfg
        self.model.eval()
        ids = [policy_prompt_ids(self.tokenizer, p) for p in prompts]
        requests = [GenerationRequest(p, n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p,
                                      max_new_tokens=cfg.max_new_tokens, seed=seed * 7919 + i)
                    for i, p in enumerate(ids)]
        completions = [c for group in self.engine.generate(requests) for c in group]
        return Rollouts(list(prompts), ids, completions)

    def _rows_to_train(self, rewards: list[float | None]) -> list[int]:
        g = self.cfg.group_size
        if not self.cfg.filter_groups:
            return list(range(len(rewards)))
        informative = filter_degenerate_groups(rewards, g)
        return [i for i in range(len(rewards)) if informative[i // g]]

    def optimize(self, examples: list[Example], advantages: torch.Tensor) -> dict[str, float]:
        """``num_iterations`` optimizer steps on these rollouts; gradients accumulate over micro-batches."""
        cfg = self.cfg
        if not examples:
            return {}
        with torch.no_grad():
            # The policy that sampled: for a single iteration it equals the one being trained.
            old = self._logprobs(self.model, examples) if cfg.num_iterations > 1 else None
            ref = self._logprobs(self.reference, examples) if self.reference is not None else None
        self.model.train()
        totals: dict[str, float] = {}
        for _ in range(cfg.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            for k, v in self.accumulate(examples, advantages, old, ref).items():
                totals[k] = totals.get(k, 0.0) + v / cfg.num_iterations
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
            totals["grad_norm"] = totals.get("grad_norm", 0.0) + float(norm) / cfg.num_iterations
            self.optimizer.step()
        self.model.eval()
        return totals

    def _chunks(self, n: int) -> list[range]:
        size = self.cfg.micro_batch_size
        return [range(i, min(i + size, n)) for i in range(0, n, size)]

    def _logprobs(self, model, examples: list[Example]) -> list[torch.Tensor]:
        return [batch_logprobs(model, [examples[i] for i in c])[0] for c in self._chunks(len(examples))]

    def accumulate(self, examples: list[Example], advantages: torch.Tensor, old: list[torch.Tensor] | None = None,
                   ref: list[torch.Tensor] | None = None) -> dict[str, float]:
        """Add the GRPO loss's gradient to ``.grad``, one micro-batch at a time.

        The sum over micro-batches equals the whole batch's gradient in every loss mode
        (token mode divides by the whole batch's token count; the per-sequence modes
        weight each micro-batch by its share of the sequences). ``old``/``ref``: per-chunk
        log-probabilities of the sampling and the reference policy (None: the current
        policy, no KL). Returns the stats, averaged over tokens.
        """
        cfg = self.cfg
        advantages = advantages.to(self.model.device)
        num_tokens = sum(len(e.target_ids) for e in examples)
        totals: dict[str, float] = {}
        for j, c in enumerate(self._chunks(len(examples))):
            logp, mask = batch_logprobs(self.model, [examples[i] for i in c])
            loss, stats = grpo_loss(logp, old[j] if old else logp.detach(), ref[j] if ref else None,
                                    advantages[c.start:c.stop], mask, beta=cfg.beta, eps_low=cfg.eps_low,
                                    eps_high=cfg.eps_high, mode=cfg.loss, num_tokens=num_tokens,
                                    max_len=cfg.max_new_tokens + 1)
            if cfg.loss != LossMode.TOKEN:
                loss = loss * len(c) / len(examples)
            loss.backward()
            share = mask.sum().item() / num_tokens
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v * share
        return totals

    def _record(self, step: int, rollouts: Rollouts, trained: int, stats: dict, times: tuple) -> dict:
        scored = [r for r in rollouts.rewards if r is not None]
        lengths = [len(c.token_ids) for c in rollouts.completions]
        record = {
            "step": step + 1,
            "reward": sum(scored) / len(scored) if scored else None,
            "unscored": len(rollouts.rewards) - len(scored),
            "completions": len(rollouts.completions),
            "trained": trained,
            "mean_length": sum(lengths) / len(lengths),
            "truncated": sum(not c.finished for c in rollouts.completions),
            **{k: round(v, 6) for k, v in stats.items()},
            "rollout_s": round(times[0], 3), "reward_s": round(times[1], 3), "update_s": round(times[2], 3),
        }
        if self.metrics_fn is not None:
            record.update(self.metrics_fn(rollouts))
        return record

    def save(self, path: Path | None) -> None:
        if path is None:
            return
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)


def load_prompts(path: str | Path) -> list[Conversation]:
    """Prompts from JSONL (``prompt``, ``query``, ``conversation`` or ``messages`` per line) or
    plain text (one per non-empty line)."""
    path = Path(path)
    lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    if path.suffix != ".jsonl":
        return [line.strip() for _, line in lines]
    prompts: list[Conversation] = []
    for n, line in lines:
        record = json.loads(line)
        prompt = next((record[k] for k in ("prompt", "query", "conversation", "messages") if record.get(k)), None)
        if prompt is None:
            raise ValueError(f"{path}:{n}: needs 'prompt', 'query', 'conversation' or 'messages'")
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts
