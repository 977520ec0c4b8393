"""The model card's figures, through the evaluation library (what ``grm eval`` runs).

For a finished ``grm spct`` run folder: the bootstrapped voting@k / MetaRM@k table of the
final GRM with its meta RM (temperature 0.5, 16 samples per item, 500 held-out test items),
and the greedy accuracy of every stage checkpoint on the same items. One JSON report per
checkpoint is written into ``out``.

    python scripts/card_figures.py --run runs/spct --out runs/spct/eval
    card_figures(Path("runs/spct"), Path("runs/spct/eval"))   # from Python
"""

from __future__ import annotations

import json
from pathlib import Path

from grm.eval.records import load_data
from grm.eval.report import format_table
from grm.eval.run import EvalSettings, describe_judge, evaluate, local_scorer
from grm.judge import GenerativeRewardModel

DATA = "synthetic:test:500"


def report_for(model: Path, out: Path, settings: EvalSettings, meta_rm: Path | None = None) -> dict:
    """Evaluate one checkpoint on ``settings.data`` and write its report to ``out``."""
    judge = GenerativeRewardModel.load(str(model), meta_rm=str(meta_rm) if meta_rm else None)
    items, skipped = load_data(settings.data, settings.limit)
    run = evaluate(local_scorer(judge), describe_judge(judge), items, skipped, settings,
                   has_meta=judge.meta_rm is not None)
    out.write_text(json.dumps(run.report, indent=2) + "\n", encoding="utf-8")
    print(format_table(run.report), flush=True)
    return run.report


def card_figures(run: Path, out: Path, samples: int = 16, batch_size: int = 16) -> None:
    """Write ``final.json`` (the final GRM with its meta RM, ``samples`` per item) and one
    greedy report per earlier stage into ``out``, for the ``grm spct`` run folder ``run``."""
    run, out = Path(run), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    final = EvalSettings(DATA, ks=(1, 2, 4, 8, 16), samples=samples, max_new_tokens=256,
                         batch_size=batch_size)
    report_for(run / "rl", out / "final.json", final, meta_rm=run / "meta_rm")
    for stage in ("cold_start", "rft"):  # greedy comes with every report; one sample keeps it cheap
        greedy = EvalSettings(DATA, ks=(1,), samples=1, max_new_tokens=256, batch_size=batch_size)
        report_for(run / stage, out / f"{stage}.json", greedy)

