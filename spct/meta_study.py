"""Compare meta-RM training recipes on one fixed set of samples (the study in the model card).

    python scripts/meta_study.py --out runs/meta-study --prompts 1536 --steps 400 \\
        --recipes all,soft,mixed,balanced

    run_study(StudyConfig(out="runs/meta-study", recipes=("all", "soft")))   # from Python

1. The GRM (default: the bundled one) samples 4 judgments on each of ``--prompts`` train
   prompts, chosen and drawn as the pipeline's meta stage does (``stages.meta_samples``):
   ``train_samples.jsonl``.
2. It samples 16 judgments at temperature 0.5 on each of ``--val-items`` validation items,
   with ``grm eval``'s seeds: ``validation.jsonl`` (the ``grm eval --judgments`` format).
3. Each recipe trains a meta RM from the GRM's weights on its share of the train samples,
   rates the validation judgments, and reports voting@k, MetaRM@k and how well the ratings
   separate samples of one item (``grm.eval.statistics.meta_separation``): ``results.jsonl``.

Files from steps 1 and 2 are reused when they exist, so recipes compare on the same samples.

Recipes (each trains with binary cross-entropy, as the paper's meta RM):

- ``all``: every parsed sample, labelled by the rule (a tie at the top is wrong); the pipeline's.
- ``soft``: the same, but a tie among t responses at the top is labelled 1/t, what a random
  tie-break would score.
- ``mixed``: only prompts whose samples disagree, so item difficulty teaches nothing.
- ``balanced``: two-response samples without ties, with as many right as wrong at every
  score gap, so the gap's size teaches nothing.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import grm.defaults as defaults

from grm.default_model import default_model_path
from grm.eval.records import load_data
from grm.eval.report import write_judgments
from grm.eval.run import local_scorer, score_items
from grm.eval.statistics import SampleMatrix, bootstrap_accuracy, meta_separation
from grm.judge import GenerativeRewardModel
from grm.meta_rm import MetaRewardModel
from grm.prompts import build_judge_content
from spct.config import FULL
from spct.data import train_items
from spct.meta_rm_train import META_MAX_LENGTH, MetaConfig, train_meta_rm
from spct.stages import meta_items, meta_samples

RECIPES = ("all", "soft", "mixed", "balanced")


def _gap(scores, best: int) -> int:
    """Score of the best response minus the highest other score (two or more responses)."""
    return scores[best] - max(s for j, s in enumerate(scores) if j != best)


def recipe_data(rows: list[dict], best: list[int], recipe: str, seed: int = 0) -> tuple[list[dict], list[float]]:
    """The train samples a recipe uses and their labels; ``best[r["item"]]`` is the labelled best."""
    parsed = [r for r in rows if r["scores"] is not None]
    if recipe == "all":
        return parsed, [float(r["correct"]) for r in parsed]
    if recipe == "soft":
        labels = []
        for r in parsed:
            scores, b = r["scores"], best[r["item"]]
            top = [j for j, s in enumerate(scores) if s == max(scores)]
            labels.append((1.0 / len(top) if b in top else 0.0) if len(scores) > 1 else float(r["correct"]))
        return parsed, labels
    if recipe == "mixed":
        verdicts: dict[int, set] = {}
        for r in parsed:
            verdicts.setdefault(r["item"], set()).add(bool(r["correct"]))
        kept = [r for r in parsed if len(verdicts[r["item"]]) == 2]
        return kept, [float(r["correct"]) for r in kept]
    if recipe == "balanced":
        by_gap: dict[tuple[int, bool], list[dict]] = {}
        for r in parsed:
            if len(r["scores"]) == 2 and (gap := _gap(r["scores"], best[r["item"]])):
                by_gap.setdefault((abs(gap), gap > 0), []).append(r)
        rng, kept = random.Random(f"balanced:{seed}"), []
        for size in sorted({size for size, _ in by_gap}):
            right, wrong = by_gap.get((size, True), []), by_gap.get((size, False), [])
            n = min(len(right), len(wrong))
            kept += rng.sample(right, n) + rng.sample(wrong, n)
        return kept, [float(r["correct"]) for r in kept]
    raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")


def validation_matrix(rows: list[dict]):
    """(SampleMatrix without ratings, [(item, sample)] of the valid samples) from ``--judgments`` lines."""

    width = max(len(j["permutation"]) for r in rows for j in r["sampled"])
    scores = np.full((len(rows), len(rows[0]["sampled"]), width), np.nan)
    valid = []
    for i, r in enumerate(rows):
        for s, j in enumerate(r["sampled"]):
            if j["scores"] is not None:
                scores[i, s, :len(j["scores"])] = j["scores"]
                valid.append((i, s))
    return SampleMatrix(scores, np.array([r["best"] for r in rows])), valid


@dataclass(frozen=True)
class StudyConfig:
    """What ``run_study`` compares (scripts/meta_study.py has a flag for each)."""

    out: str  # folder for the samples and results.jsonl
    grm: str | None = None  # GRM checkpoint (None: the bundled one)
    recipes: tuple[str, ...] = RECIPES
    prompts: int = 1536  # train prompts sampled (x4 judgments)
    val_items: int = 300  # validation items (x16 judgments)
    steps: int = 400  # meta RM training steps per recipe
    batch_size: int = 16
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.recipes or set(self.recipes) - set(RECIPES):
            raise ValueError(f"StudyConfig.recipes takes {', '.join(RECIPES)}, got {self.recipes!r}")


def run_study(cfg: StudyConfig) -> list[dict]:
    """Sample (or reuse) the train and validation judgments, then train and rate each recipe;
    returns the rows appended to ``results.jsonl`` (one per recipe)."""
    out, results = Path(cfg.out), []
    out.mkdir(parents=True, exist_ok=True)
    path = cfg.grm or str(default_model_path())
    grm = GenerativeRewardModel.load(path, device="cpu")
    items = meta_items(train_items(FULL, cfg.seed), cfg.prompts, cfg.seed)
    samples = out / "train_samples.jsonl"
    if not samples.exists():
        fresh = meta_samples(grm, items, cfg.seed, cfg.max_new_tokens)
        samples.write_text("".join(json.dumps({"item": t.item, "permutation": t.permutation, "text": t.text,
                                               "scores": t.scores, "correct": t.correct}) + "\n" for t in fresh))
    rows = [json.loads(line) for line in samples.read_text().splitlines()]

    validation = out / "validation.jsonl"
    val_items, _ = load_data(f"synthetic:validation:{cfg.val_items}", None)
    if not validation.exists():
        kept, sampled, greedy, _ = score_items(local_scorer(grm), val_items, samples=16, temperature=defaults.TEMPERATURE,
                                               max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, meta=False,
                                               batch_size=64)
        write_judgments(str(validation), kept, sampled, greedy)
    val_rows = [json.loads(line) for line in validation.read_text().splitlines()]
    by_line = {it.line: it for it in val_items}
    plain, where = validation_matrix(val_rows)
    contents = [(build_judge_content(grm.template, by_line[val_rows[i]["line"]].input,
                                     tuple(val_rows[i]["sampled"][s]["permutation"])),
                 val_rows[i]["sampled"][s]["text"]) for i, s in where]

    ks = [k for k in (1, 2, 4, 8, 16) if k <= plain.scores.shape[1]]
    for recipe in cfg.recipes:
        chosen, labels = recipe_data(rows, [it.best for it in items], recipe, cfg.seed)
        pairs = [(build_judge_content(grm.template, items[r["item"]].item, tuple(r["permutation"])), r["text"])
                 for r in chosen]
        # The GRM's own weights (float32 on the CPU) start each meta RM; train_meta_rm only reads them.
        meta, tokenizer, stats = train_meta_rm(grm.engine.model, grm.engine.tokenizer, pairs, labels,
                                               MetaConfig(steps=cfg.steps, batch_size=cfg.batch_size,
                                                          seed=cfg.seed), desc=f"meta RM ({recipe})")
        meta.eval()
        ratings = np.full(plain.scores.shape[:2], np.nan)
        for (i, s), value in zip(where, MetaRewardModel(meta, tokenizer, max_length=META_MAX_LENGTH).score(contents)):
            ratings[i, s] = value
        rated = SampleMatrix(plain.scores, plain.best, ratings)
        curves = bootstrap_accuracy(rated, ks, seed=cfg.seed, aggregations=("voting", "meta_voting"))
        result = {"recipe": recipe, "train": stats, "k": ks, "separation": meta_separation(rated),
                  **{a: [round(100 * e.accuracy, 2) for e in curve] for a, curve in curves.items()}}
        print(json.dumps(result), flush=True)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
        results.append(result)
    return results

