"""The flags of ``grm grpo`` and ``grm grpo-demo`` (argparse only: building the ``grm``
parser imports no torch). ``grm grpo`` gets one flag per ``GRPOConfig`` field."""

from __future__ import annotations

import argparse
import dataclasses


def add_grpo_arguments(p: argparse.ArgumentParser) -> None:
    """``grm grpo`` (``policy.train``): the trainer's config plus the policy, prompts and reward."""
    from policy.config import ADVANTAGES, LOSSES, GRPOConfig  # a dataclass only, no torch

    choices = {"advantage": ADVANTAGES, "loss": LOSSES}

    p.add_argument("--model", required=True, help="the policy: a Hugging Face causal LM (local path or hub id)")
    p.add_argument("--prompts", required=True,
                   help="a .jsonl file ({'prompt': str} or {'conversation'|'messages': [...]} per line) "
                        "or a text file with one prompt per line")
    reward = p.add_mutually_exclusive_group(required=True)
    reward.add_argument("--target", help="the reward service at HOST:PORT")
    reward.add_argument("--grm", help="a GRM checkpoint to run in this process ('default' = the bundled one)")
    reward.add_argument("--reward-function", metavar="MODULE:NAME",
                        help="a Python function (prompt, completion) -> float | None")
    p.add_argument("--per-response", action="store_true",
                   help="judge each completion alone (N = 1) instead of a prompt's whole group as one input")
    p.add_argument("--judge-k", type=int, default=4, help="GRM judgments per input (default 4)")
    p.add_argument("--judge-temperature", type=float, default=0.5)
    p.add_argument("--judge-max-new-tokens", type=int, default=512)
    p.add_argument("--max-wait", type=float, default=600.0,
                   help="seconds to wait out an unreachable reward service before stopping (default 600)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    group = p.add_argument_group("GRPO (policy.config.GRPOConfig)")
    for f in dataclasses.fields(GRPOConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = type(f.default) if f.default is not None else str
            group.add_argument(flag, type=kind, default=f.default, choices=choices.get(f.name),
                               help=f"(default: {f.default})")


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """``grm grpo-demo`` (``policy.demo``)."""
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


