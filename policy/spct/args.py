"""The flags of ``grm spct`` (argparse only, so building the ``grm`` parser imports no torch).

See ``policy.spct.pipeline`` for what each stage does.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder: one checkpoint per stage, report.json")
    p.add_argument("--quick", action="store_true", help="a tiny model and tiny budgets (< 2 min; for tests)")
    p.add_argument("--base-model", help="start from this causal LM (local path or hub id) instead of nothing")
    p.add_argument("--data", help="JSONL preference data instead of the synthetic tasks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--beta", type=float, default=0.08,
                   help="KL coefficient of the online RL stage (default 0.08, the paper's; see --beta-grid)")
    p.add_argument("--beta-grid", action="store_true",
                   help="pick beta from {0, 0.01, 0.02, 0.08} by short RL runs judged on the validation split")
    p.add_argument("--hinted", action="store_true", help="RFT: one extra hinted sample per prompt")
    p.add_argument("--resume", action="store_true", help="reuse stage checkpoints already in --out")
    p.add_argument("--stop-after", choices=["tokenizer", "cold_start", "rft", "rl", "meta_rm"],
                   help="stop after this stage")
