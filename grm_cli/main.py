"""The ``grm`` console script: builds the parser from the subcommand modules and dispatches.

    grm --help
    grm score --query "Name a prime below 10." --response 9 --response 7 --show
"""

from __future__ import annotations

import argparse

from grm_cli import (demo, eval, export_gguf, grpo, grpo_demo, info, inspect, score, serve, serve_ray, spct,
                     train_english)

# The order ``grm --help`` lists them in.
COMMANDS = (score, serve, serve_ray, demo, info, eval, inspect, spct, train_english, grpo, grpo_demo, export_gguf)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grm", description="Generative reward model tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_arguments(sub.add_parser(command.NAME, help=command.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {command.NAME: command.run for command in COMMANDS}[args.command]
    return handler(args)
