"""``grm train-english``: train the English judge on a pretrained base, in resumable stages.

    grm train-english --data hh.jsonl rmbench.jsonl oasst.jsonl --out runs/english
    grm train-english --data ... --out runs/english --stages draft --stage-minutes 30
    grm train-english --data ... --out runs/english2 --drafts-from runs/english --stages sft
    grm train-english --data ... --out runs/english4 --drafts-from runs/english --stages verdict \
        --set verdict.start=runs/english3/sft-adapter --set verdict.hold_out=60

Rerun the same command after a stop: finished stages are skipped and a stopped one resumes
from its files (``spct.english``). Each stage appends a line to ``OUT/report.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from spct.english import ENGLISH_TEMPLATE, STAGES, EnglishOptions, run as run_stages

NAME = "train-english"
HELP = ("train the English judge (cold-start drafts, LoRA SFT, RFT, hardening, verdict, Bradley-Terry baseline), "
        "resumable")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, help="preference JSONL files (their train split is used)")
    p.add_argument("--out", required=True, help="run folder: drafts, adapters, report.jsonl")
    p.add_argument("--drafts-from", metavar="DIR",
                   help="an earlier run folder whose drafts.jsonl and validation.jsonl this run uses and extends "
                        "(default: OUT)")
    p.add_argument("--base", default="smollm2-135m-instruct", help="base model name, folder or .gguf file")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, in order (default {','.join(STAGES)})")
    p.add_argument("--items-per-source", type=int, default=500, help="training pairs drafted per file (default 500)")
    p.add_argument("--stage-minutes", type=float, default=60.0, help="time limit of each stage in one run (default 60)")
    p.add_argument("--template", default=ENGLISH_TEMPLATE, help=f"judge template (default {ENGLISH_TEMPLATE})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: every core; 1 does better on a machine busy with other work)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a stage setting, e.g. --set sft.epochs=2 --set bt.epochs=1 (JSON values)")


def _settings(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"grm train-english: --set takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    try:
        opts = EnglishOptions(data=tuple(args.data), out=Path(args.out), base=args.base,
                              stages=tuple(s for s in args.stages.split(",") if s),
                              items_per_source=args.items_per_source, stage_minutes=args.stage_minutes,
                              seed=args.seed, template=args.template, extra=_settings(args.set),
                              drafts_from=Path(args.drafts_from) if args.drafts_from else None)
    except ValueError as e:
        raise SystemExit(f"grm train-english: {e}") from None
    import torch  # heavy: only a run needs it

    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    for line in run_stages(opts):
        print(json.dumps(line))
    return 0
