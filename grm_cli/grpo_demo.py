"""``grm grpo-demo``: GRPO on a small policy against the bundled GRM service, with the true
pass rate measured by the task rules (``policy.demo`` describes what it shows).

    grm grpo-demo --out runs/grpo-demo            # about 15 minutes on 2 CPU cores
    grm grpo-demo --quick --out /tmp/demo         # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses

from policy.demo import DemoConfig
from policy.demo import run as run_demo

NAME = "grpo-demo"
HELP = "GRPO on a small policy against the bundled GRM service, with the true pass rate measured by the task rules"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/grpo-demo", help="output folder (default: %(default)s)")
    p.add_argument("--target", help="use this running service (host:port) instead of starting one")
    p.add_argument("--steps", type=int, default=120, help="GRPO steps (default: %(default)s)")
    p.add_argument("--sft-steps", type=int, default=500, help="fine-tuning steps before GRPO (default: %(default)s)")
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--k", type=int, default=2, help="GRM judgments per input (default: %(default)s)")
    p.add_argument("--grouped", action="store_true",
                   help="judge a prompt's whole group as one input (N = group size) instead of each completion "
                        "alone; the bundled GRM was trained on N <= 3 and ranks better one response at a time")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--beta", type=float, default=0.02)
    p.add_argument("--eval-queries", type=int, default=200, help="held-out queries per evaluation")
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smoke run: few steps, small evaluations")


def run(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(DemoConfig)}
    try:
        config = DemoConfig(**{name: getattr(args, name) for name in fields})
    except ValueError as e:
        raise SystemExit(f"grm grpo-demo: {e}") from None
    return run_demo(config)
