"""Adaptive k vs fixed k: accuracy against mean generated tokens per item, replayed offline.

Reads the samples ``benchmarks/dump_samples.py`` kept (S judgments per labelled item,
in index order, with their token counts) and replays on them:

- fixed k (k = 1, 2, 4, ... S): the first k samples of every item;
- adaptive k with budget S: the rounds of ``grm.adaptive.rounds(S)``, stopping each item
  where ``grm.adaptive.stop_reason`` stops it, for the ``decided`` rule and the
  ``confident`` rule at several z.

An item is right when the labelled best response has the highest vote sum over the samples
used (a tie counts a half, the expectation of the seeded tie-break; no valid sample: wrong).
Accuracy comes with a 95% bootstrap interval over items. The replay reads the first m
samples of the fixed draw; a live adaptive run draws rounds after the first from streams of
their own (``GenerativeRewardModel._draw``), the same distribution, so ``grm eval
--adaptive`` checks one point of the curve live.

Run::

    python benchmarks/dump_samples.py --data synthetic:test:500 --samples 16 --out samples16.jsonl
    python benchmarks/bench_adaptive_k.py --samples samples16.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing
from grm.adaptive import rounds, stop_reason, vote_sums  # noqa: E402


def correct(scores, n: int, best: int) -> float:
    if all(s is None for s in scores):
        return 0.0
    sums = vote_sums(scores, n)
    top = max(sums)
    if sums[best] != top:
        return 0.0
    return 1.0 / sums.count(top)


def replay(item: dict, mode: str, z: float) -> tuple[float, int, int]:
    """(correct, tokens, samples) for one item under a rule with budget S."""
    scores, tokens, k = item["scores"], item["tokens"], len(item["scores"])
    for _, end in rounds(k):
        if mode == "fixed" or stop_reason(mode, scores[:end], k, z) is not None:
            if mode == "fixed" and end < k:
                continue
            return correct(scores[:end], item["n"], item["best"]), sum(tokens[:end]), end
    raise AssertionError("the last round always stops")


def summary(rows: np.ndarray, boot: int = 1000) -> tuple[float, float, float, float, float]:
    """(accuracy, low, high, mean tokens, mean samples) with a bootstrap over items."""
    rng = np.random.default_rng(0)
    means = rows[rng.integers(0, len(rows), (boot, len(rows))), 0].mean(axis=1)
    return rows[:, 0].mean(), np.quantile(means, 0.025), np.quantile(means, 0.975), rows[:, 1].mean(), rows[:, 2].mean()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", required=True, help="JSONL from benchmarks/dump_samples.py")
    p.add_argument("--z", default="0.5,1,1.5,2,3,4,6", help="z values of the confident rule")
    args = p.parse_args()
    items = [json.loads(line) for line in open(args.samples, encoding="utf-8")]
    big = len(items[0]["scores"])
    print(f"{len(items)} items, {big} samples each; accuracy [95% interval], mean tokens and samples per item")
    print(f"{'rule':<26}{'accuracy':>24}{'tokens':>10}{'samples':>9}")
    k = 1
    while k <= big:
        sub = [dict(it, scores=it["scores"][:k], tokens=it["tokens"][:k]) for it in items]
        rows = np.array([replay(it, "fixed", 0) for it in sub])
        acc, lo, hi, tok, n = summary(rows)
        print(f"{'fixed k=' + str(k):<26}{100 * acc:8.1f} [{100 * lo:5.1f}, {100 * hi:5.1f}]{tok:10.0f}{n:9.1f}")
        k *= 2
    rules = [("decided", 0.0)] + [("confident", float(z)) for z in args.z.split(",")]
    for mode, z in rules:
        rows = np.array([replay(it, mode, z) for it in items])
        acc, lo, hi, tok, n = summary(rows)
        name = f"adaptive {mode}" + (f" z={z:g}" if mode == "confident" else "")
        print(f"{name:<26}{100 * acc:8.1f} [{100 * lo:5.1f}, {100 * hi:5.1f}]{tok:10.0f}{n:9.1f}")


if __name__ == "__main__":
    main()
