"""The model card's figures, through the evaluation harness (``grm eval``).

For a finished ``grm spct`` run folder: the bootstrapped voting@k / MetaRM@k table of the
final GRM with its meta RM (temperature 0.5, 16 samples per item, 500 held-out test items),
and the greedy accuracy of every stage checkpoint on the same items. One JSON report per
checkpoint is written into ``--out``.

    python -m policy.spct.card_figures --run runs/spct --out runs/spct/eval
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grm.cli import main as grm_main

DATA = "synthetic:test:500"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m policy.spct.card_figures", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a grm spct --out folder")
    p.add_argument("--out", required=True, help="where the JSON reports go")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--data", DATA, "--max-new-tokens", "256", "--batch-size", str(args.batch_size)]
    grm_main(["eval", *common, "--model", str(run / "rl"), "--meta-rm", str(run / "meta_rm"),
              "--samples", str(args.samples), "-k", "1,2,4,8,16", "--output", str(out / "final.json")])
    for stage in ("cold_start", "rft"):  # greedy comes with every report; one sample keeps it cheap
        grm_main(["eval", *common, "--model", str(run / stage), "--samples", "1", "-k", "1",
                  "--output", str(out / f"{stage}.json")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
