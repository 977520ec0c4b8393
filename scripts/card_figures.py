"""Command line of the model card's figures (``spct.card_figures``) for a ``grm spct`` run.

    python scripts/card_figures.py --run runs/spct --out runs/spct/eval
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing

from spct.card_figures import card_figures  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/card_figures.py",
                                description="The model card's figures, through the evaluation library.")
    p.add_argument("--run", required=True, help="a grm spct --out folder")
    p.add_argument("--out", required=True, help="where the JSON reports go")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    card_figures(Path(args.run), Path(args.out), samples=args.samples, batch_size=args.batch_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
