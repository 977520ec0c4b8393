"""Command line of the meta-RM recipe study (``spct.meta_study``, the model card's study).

    python scripts/meta_study.py --out runs/meta-study --prompts 1536 --steps 400 \\
        --recipes all,soft,mixed,balanced
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing

from spct.meta_study import RECIPES, StudyConfig, run_study  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/meta_study.py",
                                description="Compare meta-RM training recipes on one fixed set of samples.")
    p.add_argument("--out", required=True, help="folder for the samples and results.jsonl")
    p.add_argument("--grm", help="GRM checkpoint (default: the bundled one)")
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    p.add_argument("--prompts", type=int, default=1536, help="train prompts sampled (x4 judgments)")
    p.add_argument("--val-items", type=int, default=300, help="validation items (x16 judgments)")
    p.add_argument("--steps", type=int, default=400, help="meta RM training steps per recipe")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        cfg = StudyConfig(out=args.out, grm=args.grm, recipes=tuple(r.strip() for r in args.recipes.split(",")
                                                                    if r.strip()),
                          prompts=args.prompts, val_items=args.val_items, steps=args.steps,
                          batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, seed=args.seed)
    except ValueError as e:
        p.error(str(e))
    run_study(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
