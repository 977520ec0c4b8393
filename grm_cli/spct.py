"""``grm spct``: train a GRM with SPCT (cold start, RFT, online RL, meta RM) in one command.

    grm spct --out runs/spct                       # about an hour on 2 CPU cores, synthetic tasks
    grm spct --out /tmp/q --quick                  # < 2 min: a tiny model, every stage, for tests
    grm spct --out runs/x --base-model Qwen/Qwen2.5-0.5B-Instruct --data prefs.jsonl --device cuda

The stages are described in ``spct.pipeline``; each flag is a field of ``spct.config.SPCTOptions``.
"""

from __future__ import annotations

import argparse

from spct.config import STAGES, SPCTOptions
from spct.pipeline import run as run_pipeline

NAME = "spct"
HELP = "train a GRM with SPCT (cold start, RFT, online RL, meta RM)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder: one checkpoint per stage, report.json")
    p.add_argument("--quick", action="store_true", help="a tiny model and tiny budgets (< 2 min; for tests)")
    p.add_argument("--base-model", help="start from this causal LM (local path, hub id, .gguf file or a base "
                   "name such as smollm2-135m-instruct) instead of nothing")
    p.add_argument("--data", help="JSONL preference data instead of the synthetic tasks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--beta", type=float, default=0.08,
                   help="KL coefficient of the online RL stage (default 0.08, the paper's; see --beta-grid)")
    p.add_argument("--beta-grid", action="store_true",
                   help="pick beta from {0, 0.01, 0.02, 0.08} by short RL runs judged on the validation split")
    p.add_argument("--hinted", action="store_true", help="RFT: one extra hinted sample per prompt")
    p.add_argument("--resume", action="store_true", help="reuse stage checkpoints already in --out")
    p.add_argument("--stop-after", choices=list(STAGES), help="stop after this stage")


def run(args: argparse.Namespace) -> int:
    options = SPCTOptions(out=args.out, quick=args.quick, base_model=args.base_model, data=args.data,
                          seed=args.seed, device=args.device, beta=args.beta, beta_grid=args.beta_grid,
                          hinted=args.hinted, resume=args.resume, stop_after=args.stop_after)
    return run_pipeline(options)
