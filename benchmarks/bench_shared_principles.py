"""Principles once per query vs every sample writing its own, on a GRPO-shaped workload.

Starts the reward service in this process (``services.server.BackgroundServer``, cache
off) on the bundled GRM, whose engine is wrapped to count the tokens it generates (the
shared principles drafts included). The workload is one GRPO step judged per response:
``--prompts`` test-split queries of the task generator, ``--group`` candidate answers each,
every answer its own input, all in one ScoreBatch with k = ``--k``. Each run sends it
with ``shared_principles`` off, then on (same seed), and the script prints per run and as
medians: wall time, tokens generated, and accuracy against the task rules: over the pairs
of answers to one query whose true scores differ, the share the GRM orders the same way
(a tie in reward counts a half), with a 95% bootstrap interval over queries.

Run::

    python benchmarks/bench_shared_principles.py                  # 16 prompts x 4 answers, k=4, 3 runs
    python benchmarks/bench_shared_principles.py --prompts 4 --runs 1
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing
from grm.default_model import default_model_path  # noqa: E402
from grm.judge import GenerativeRewardModel  # noqa: E402
from grm.tasks import generate_tasks  # noqa: E402
from grm.types import SamplingOptions, ScoreInput  # noqa: E402
from services.client import RewardClient  # noqa: E402
from services.server import BackgroundServer, ServerConfig  # noqa: E402
from services.validation import Limits  # noqa: E402


class CountingEngine:
    """Forwards to an engine and counts the tokens it generates."""

    def __init__(self, engine):
        self.inner, self.generated = engine, 0
        self.model_id, self.revision = engine.model_id, engine.revision
        self.tokenizer, self.max_context = engine.tokenizer, engine.max_context

    def generate(self, requests):
        out = self.inner.generate(requests)
        self.generated += sum(len(c.token_ids) for group in out for c in group)
        return out


def pair_agreement(rewards, truth) -> list[float]:
    """Per pair of answers with different true scores: 1 if ordered alike, 0.5 tied, 0 else."""
    out = []
    for i in range(len(truth)):
        for j in range(i + 1, len(truth)):
            if truth[i] == truth[j]:
                continue
            a, b = rewards[i], rewards[j]
            if a is None or b is None or a == b:
                out.append(0.5)
            else:
                out.append(1.0 if (a > b) == (truth[i] > truth[j]) else 0.0)
    return out


def interval(per_query: list[list[float]], rounds: int = 1000) -> tuple[float, float, float]:
    rng = random.Random(0)
    flat = [x for q in per_query for x in q]
    means = []
    for _ in range(rounds):
        pick = [x for _ in per_query for x in per_query[rng.randrange(len(per_query))]]
        means.append(sum(pick) / len(pick))
    means.sort()
    return sum(flat) / len(flat), means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=4, help="answers per prompt (the task generator makes 1..4)")
    p.add_argument("-k", type=int, default=4)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tasks = generate_tasks(args.prompts, seed=args.seed, split="test", num_responses=args.group)
    items = [ScoreInput(t.query, [r]) for t in tasks for r in t.responses]
    judge = GenerativeRewardModel.load(str(default_model_path()))
    judge.engine = engine = CountingEngine(judge.engine)
    config = ServerConfig(limits=Limits(max_batch_items=512), defaults=SamplingOptions(k=args.k))
    figures = {False: [], True: []}
    with BackgroundServer(judge, config=config) as bg:
        client = RewardClient(bg.address, timeout_s=3600)
        for run in range(args.runs):
            for shared in (False, True):
                before, began = engine.generated, time.perf_counter()
                outs = client.score_batch(items, k=args.k, seed=args.seed + run, shared_principles=shared,
                                          cache_policy="bypass")
                wall = time.perf_counter() - began
                rewards = [o.result.rewards[0] for o in outs]
                per_query = [pair_agreement(rewards[q * args.group:(q + 1) * args.group], t.scores)
                             for q, t in enumerate(tasks)]
                acc = interval([q for q in per_query if q])
                figures[shared].append((wall, engine.generated - before, acc))
                print(f"run {run} shared_principles={shared!s:5}: {wall:7.1f} s, {engine.generated - before:7d} "
                      f"tokens, pair accuracy {100 * acc[0]:.1f}% [{100 * acc[1]:.1f}, {100 * acc[2]:.1f}]",
                      flush=True)
    for shared in (False, True):
        walls = [w for w, _, _ in figures[shared]]
        tokens = [t for _, t, _ in figures[shared]]
        print(f"shared_principles={shared!s:5}: median {statistics.median(walls):.1f} s, "
              f"median {statistics.median(tokens):.0f} tokens")
    ratio = statistics.median([a[0] / b[0] for a, b in zip(figures[False], figures[True])])
    tok = statistics.median([a[1] / b[1] for a, b in zip(figures[False], figures[True])])
    print(f"wall time off/on: {ratio:.2f}x (median of {args.runs}); tokens off/on: {tok:.2f}x; "
          f"{len(items)} inputs, k={args.k}")


if __name__ == "__main__":
    main()
