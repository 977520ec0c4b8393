"""Sample S judgments per labelled item once and keep them, for replaying stopping rules offline.

``grm eval`` reports accuracy@k; this script keeps what a replay of adaptive k needs and
the report leaves out: per item the labelled best response and, per sample in index
order, its scores (original response order, null when invalid) and its generated token
count. ``benchmarks/bench_adaptive_k.py --samples FILE`` then replays stopping rules on
them. Items are seeded exactly as ``grm eval`` seeds them (``grm.eval.run.item_seed``).

Run::

    python benchmarks/dump_samples.py --data synthetic:test:500 --samples 16 --out samples16.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing
from grm.default_model import default_model_path
from grm.eval.records import load_data
from grm.eval.run import item_seed, local_scorer
from grm.judge import GenerativeRewardModel
from grm.types import AggregationOptions, SamplingOptions, ScoreResult


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="synthetic:test:500")
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled GRM)")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    items, _ = load_data(args.data, None)
    judge = GenerativeRewardModel.load(args.model or str(default_model_path()))
    score = local_scorer(judge)
    began = time.monotonic()
    with open(args.out, "w", encoding="utf-8") as f:
        for start in range(0, len(items), args.batch_size):
            batch = items[start:start + args.batch_size]
            jobs = [(it.input, SamplingOptions(k=args.samples, temperature=args.temperature,
                                               max_new_tokens=args.max_new_tokens,
                                               seed=item_seed(args.seed, i, "sampled")), AggregationOptions())
                    for i, it in enumerate(batch, start)]
            for it, result in zip(batch, score(jobs)):
                if not isinstance(result, ScoreResult):
                    continue
                f.write(json.dumps({"line": it.line, "best": it.best, "n": len(it.input.responses),
                                    "scores": [None if j.scores is None else list(j.scores) for j in result.judgments],
                                    "tokens": [j.num_tokens for j in result.judgments]}) + "\n")
            f.flush()
            print(f"{start + len(batch)}/{len(items)} items, {time.monotonic() - began:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
