"""Command line of the score probe (``spct.score_probe``): what a trained judge's scores follow.

    python scripts/score_probe.py --adapter runs/english2/sft-adapter --drafts runs/english \\
        --data hh_harmless.jsonl rmbench.jsonl oasst_en100.jsonl --pairs 60 --output probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from grm.lora import load_merged  # noqa: E402
from grm.templates import load_template  # noqa: E402
from spct.drafting import read_drafts  # noqa: E402
from spct.english import training_items  # noqa: E402
from spct.score_probe import score_probe  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/score_probe.py",
                                description="Which of answers, critique lines or positions a judge's scores follow.")
    p.add_argument("--adapter", required=True, nargs="+", help="LoRA adapter folders of the English judge")
    p.add_argument("--drafts", required=True, type=Path, help="run folder holding drafts.jsonl")
    p.add_argument("--data", required=True, nargs="+", help="the preference files the run was trained from")
    p.add_argument("--pairs", type=int, default=60, help="usable drafted pairs probed (the first ones)")
    p.add_argument("--items-per-source", type=int, default=500, help="as the run's (train-english's default)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, help="JSON file for the results (default: print only)")
    args = p.parse_args(argv)
    if args.pairs < 1:
        p.error(f"--pairs must be >= 1, got {args.pairs}")
    torch.set_num_threads(args.threads)
    items = training_items(args.data, args.items_per_source, seed=0)
    rows = [row for row in read_drafts(args.drafts) if not row["reason"]][:args.pairs]
    results = {}
    for adapter in args.adapter:
        began = time.monotonic()
        model, tokenizer, _ = load_merged(adapter, AutoModelForCausalLM, torch.float32)
        template = load_template(str(Path(adapter) / "grm_template.json"))
        results[adapter] = {**score_probe(model, tokenizer, template, items, rows),
                            "wall_s": round(time.monotonic() - began, 1)}
        print(adapter, json.dumps(results[adapter]), flush=True)
    if args.output:
        args.output.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
