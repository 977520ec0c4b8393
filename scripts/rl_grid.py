"""Command line of the online-RL settings grid (``spct.rl_grid``, the model card's comparison).

    python scripts/rl_grid.py --rft runs/spct/rft --betas 0,0.01,0.02,0.08 --steps 13
    python scripts/rl_grid.py --rft runs/spct/rft --test-items 500 --control \\
        --configs "lr=2e-5,prompts_per_step=32;lr=5e-5,prompts_per_step=32,teacher_coef=1"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing

from spct.rl import RLConfig  # noqa: E402
from spct.rl_grid import parse_settings, run_grid  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/rl_grid.py",
                                description="Compare online-RL settings from one RFT checkpoint.")
    p.add_argument("--rft", required=True, help="the RFT checkpoint RL starts from")
    p.add_argument("--betas", default=None, help="KL coefficients, comma-separated (the paper: 0,0.01,0.02,0.08)")
    p.add_argument("--configs", default=None, help="RLConfig settings: 'field=value,...' per setting, ';' between")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--prompts", type=int, default=32, help="prompts per RL step (x4 samples)")
    p.add_argument("--items", type=int, default=300, help="validation items judged per setting")
    p.add_argument("--test-items", type=int, default=0, help="test items judged per setting (0: none)")
    p.add_argument("--control", action="store_true", help="teacher-only SFT beside each setting with a teacher term")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="rl_grid.json")
    args = p.parse_args(argv)
    base = RLConfig(steps=args.steps, prompts_per_step=args.prompts, seed=args.seed)
    try:
        settings = parse_settings(args.betas, args.configs, base)
    except ValueError as e:
        p.error(f"--configs: {e}")
    run_grid(args.rft, settings, items=args.items, test_items=args.test_items, control=args.control,
             seed=args.seed, device=args.device, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
