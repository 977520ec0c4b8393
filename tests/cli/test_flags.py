"""``grm --help`` changes only on purpose: every subcommand's flags are recorded in
``flags.json`` (first written from the single-module command line, before it became one
module per subcommand), and a flag added, renamed or lost fails here until the record is
updated with it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from grm_cli.main import build_parser

RECORDED = Path(__file__).with_name("flags.json")


def flag_sets(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: sorted(opt for a in p._actions for opt in (a.option_strings or [a.dest]))
            for name, p in sorted(sub.choices.items())}


def test_every_subcommand_keeps_its_flags():
    assert flag_sets(build_parser()) == json.loads(RECORDED.read_text())

