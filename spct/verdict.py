"""Train the judge's verdict: a Bradley-Terry loss on its own score line.

Fine-tuning on whole judgments spends its gradient on the hundred-odd tokens of principles
and critiques; the few tokens of the score line, where the verdict is, learn little, and
weighing them more (``sft.score_weight``) made the scores decisive but positional: the
score probe (``spct.score_probe``) found them following the order shown, not the answers.
This stage trains the verdict itself. For a labelled two-answer pair with a usable draft it
writes the judgment twice, identical up to the score line, once with the drawn scores (the
preferred answer higher) and once with the two scores exchanged, and pushes up the margin

    log P(labelled scores | judgment) - log P(exchanged scores | judgment)

through ``-log sigmoid(margin)``, the Bradley-Terry loss on the judge's own output. Each
pair comes in four cases: the preferred answer shown first or second, and the critique
sentences as drafted or exchanged (the better answer carrying the worse one's critique).
Neither the order nor the tone of the critique lines can lower the loss over all four;
only reading the answers can. On the drafted cases the SFT loss of the judgment up to its
scores (its mean token loss, times ``nll_weight``) is added so the format and the critiques
stay as trained; a batch's loss is the mean over its cases, about half of which carry it.
The SFT loss stops before the scores because only drafted cases carry it: over the scores
too, it would reward scores that follow the critiques' tone, which the exchanged cases
cannot take back (``runs/english5``, trained with it, came to follow the critiques).
With ``content_free`` the cases also put a pair's preferred answer beside a non-answer
(``spct.harden``), the real answer the labelled one, against rewarding answers that say
nothing.

The two texts of a case share their prompt, which ``policy.logprobs.batch_logprobs``
computes once; still a case costs about 1.8 SFT examples on a CPU (two judgments, in
batches of two texts).

Example::

    cases = verdict_cases(items, drafts, hold_out=60)
    loss_fn = verdict_loss(tokenizer, template, items, cases, seed=0)
    train_resumable(model, len(cases), loss_fn, LoraSettings(epochs=0.25, batch_size=4), Path("runs/v/verdict"))
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from grm.lora import is_adapter
from grm.seeds import mix_seed
from grm.templates import JudgeTemplate
from policy.logprobs import Example, batch_logprobs
from spct.cold_start import Draft, draft_from_json, draft_scores, judgment_text
from spct.data import LabeledItem, make_example
from spct.drafting import read_drafts
from spct.harden import hardening_pair, kinds_in_turn
from spct.lora_sft import LoraSettings, load_trainable, save_adapter, train_resumable

ADAPTERS = ("harden", "rft", "sft")  # a run's adapters, latest first: the stage's default start
SHAPE = ("rank", "alpha", "dropout", "top_layers")  # LoRA settings an adapter keeps when training goes on
BEGUN = "begun.json"  # in the stage's state folder: the start, case count and grouping of its first run


@dataclass(frozen=True)
class VerdictCase:
    """One of a pair's four ways to be shown: the order of its answers and its critique lines."""

    index: int  # of the labelled pair in the training items
    draft: Draft  # as drafted, or with its critiques exchanged
    permutation: tuple[int, int]  # the order the answers are shown in
    exchanged: bool  # whether the critique sentences were exchanged
    pair: LabeledItem | None = None  # a content-free pair built from the item (None: the item itself)


def usable_drafts(items: Sequence[LabeledItem], rows: Sequence[dict], hold_out: int) -> list[dict]:
    """The usable drafts of two-answer pairs, less the first ``hold_out``."""
    return [row for row in rows if not row["reason"] and len(items[row["index"]].item.responses) == 2][hold_out:]


def _four(index: int, draft: Draft, pair: LabeledItem | None = None) -> list[VerdictCase]:
    return [VerdictCase(index, draft.exchanged() if exchanged else draft, permutation, exchanged, pair)
            for permutation in ((0, 1), (1, 0)) for exchanged in (False, True)]


def verdict_cases(items: Sequence[LabeledItem], rows: Sequence[dict], hold_out: int = 0) -> list[VerdictCase]:
    """Four cases per usable two-answer draft (two orders x critiques drafted or exchanged),
    leaving out the first ``hold_out`` usable two-answer drafts (so a probe on them reads
    pairs this stage did not train on; an earlier SFT round may have)."""
    return [case for row in usable_drafts(items, rows, hold_out) for case in _four(row["index"], draft_from_json(row))]


def content_free_cases(template: JudgeTemplate, items: Sequence[LabeledItem], rows: Sequence[dict], hold_out: int,
                       per_pair: int, seed: int) -> list[VerdictCase]:
    """Four cases for each of ``per_pair`` content-free pairs per usable draft (after
    ``hold_out``): the labelled best answer beside a non-answer (``spct.harden``, the kinds
    taken in turn), the real answer the labelled one."""
    cases = []
    for row, kind, rng in kinds_in_turn(usable_drafts(items, rows, hold_out), per_pair, "verdict-content-free", seed):
        pair, draft = hardening_pair(template, items[row["index"]], draft_from_json(row), kind, rng)
        cases += _four(row["index"], draft, LabeledItem(pair, 0))
    return cases


def case_examples(tokenizer, template: JudgeTemplate, labeled: LabeledItem, case: VerdictCase,
                  seed: int) -> tuple[Example, Example]:
    """The case's judgment with the labelled scores and with the two scores exchanged;
    the texts differ only in the score line."""
    scores = draft_scores(labeled.best, 2, random.Random(mix_seed("verdict-scores", seed, case.index)))
    weights_seed = mix_seed("verdict-weights", seed, case.index)
    return tuple(make_example(tokenizer, template, labeled.item, case.permutation,
                              judgment_text(case.draft, case.permutation, s, random.Random(weights_seed)))
                 for s in (scores, scores[::-1]))


def first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """The first index where two token sequences differ (the shorter's length if one begins the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def verdict_loss(tokenizer, template: JudgeTemplate, items: Sequence[LabeledItem], cases: Sequence[VerdictCase],
                 seed: int, nll_weight: float = 1.0):
    """``loss_fn(model, indices) -> (loss, tokens)`` for ``train_resumable``: per case,
    ``-log sigmoid(margin)``, plus ``nll_weight`` times the mean token loss of the labelled
    judgment before its scores when its critiques are as drafted; averaged over the batch."""
    def loss(model, indices: list[int]) -> tuple[torch.Tensor, int]:
        total, tokens = 0.0, 0
        for i in indices:
            case = cases[i]
            labelled, exchanged = case_examples(tokenizer, template, case.pair or items[case.index], case, seed)
            logp, mask = batch_logprobs(model, [labelled, exchanged])
            cut = first_difference(labelled.target_ids, exchanged.target_ids)
            # the margin from the score line on: before it the texts are the same, and in
            # training, dropout on the adapter would make the two rows' shared tokens differ
            margins = (logp[:, cut:] * mask[:, cut:]).sum(1)
            term = -F.logsigmoid(margins[0] - margins[1])
            if nll_weight and not case.exchanged and cut:  # the judgment before its scores: format, critiques
                term = term - nll_weight * (logp[0, :cut] * mask[0, :cut]).sum() / mask[0, :cut].sum()
            total = total + term
            tokens += int(mask.sum())
        return total / len(indices), tokens
    return loss


def by_pair(loss_fn):
    """``loss_fn`` over cases made a loss over pairs: a pair's index stands for its four cases
    (``verdict_cases`` and ``content_free_cases`` list them together), so every step holds
    both orders of each pair it trains on and the pull of position cancels within the step."""
    def loss(model, indices: list[int]):
        return loss_fn(model, [4 * i + j for i in indices for j in range(4)])
    return loss


def refuse_shape(stage: str, settings: dict) -> None:
    if shape := [k for k in SHAPE if k in settings]:
        raise ValueError(f"{stage}.{shape[0]}: the {stage} stage goes on from an adapter and keeps its "
                         f"{', '.join(SHAPE)}")


def begun_start(out: Path, state: Path, stage: str, start: str | None, cases: int, **more) -> str:
    """The adapter a training stage goes on from: ``start`` (``--set STAGE.start``), else the
    one its first run began from (``state/begun.json``), else the run's latest adapter of
    ``ADAPTERS``. The start, the number of cases and ``more`` are written down on the first
    run; a rerun that would resume the saved steps on another start or other cases is refused."""
    begun = json.loads((state / BEGUN).read_text()) if (state / BEGUN).exists() else None
    start = start or (begun and begun["start"])
    if start is None:
        found = [out / f"{name}-adapter" for name in ADAPTERS if (out / f"{name}-adapter").exists()]
        if not found:
            raise ValueError(f"{out}: the {stage} stage starts from an adapter (sft, rft or harden) of this "
                             f"run or from --set {stage}.start=FOLDER; none found")
        start = found[0]
    elif not is_adapter(start):
        raise ValueError(f"{stage}.start: {start} is not an adapter folder (no adapter_config.json)")
    now = {"start": str(start), "cases": cases, **more}
    if begun is not None and {**now, **begun} != now:
        kind = "".join(f", {key} {value}" for key, value in more.items())
        raise ValueError(f"{state}: begun from {begun['start']} on {begun['cases']} cases, now {now['start']} on "
                         f"{cases}{kind}; set {stage}.start, the other settings and the drafts as they were, "
                         f"or remove {state}")
    state.mkdir(parents=True, exist_ok=True)
    (state / BEGUN).write_text(json.dumps(now) + "\n")
    return str(start)


def verdict_stage(opts, settings: dict, template: JudgeTemplate, items: list[LabeledItem], base: str,
                  log=print) -> dict:
    """The ``verdict`` stage of ``spct.english`` (``opts``: its EnglishOptions; ``base``: the
    resolved base, passed in because this module does not import the pipeline's): from
    ``verdict.start`` (default: this run's latest adapter of harden, rft, sft) trains on the
    cases of ``verdict_cases`` and writes ``verdict-adapter/``.

    ``settings`` (the ``--set verdict.KEY`` values): ``start``, ``hold_out`` (default 0),
    ``nll_weight`` (default 1), ``content_free`` (content-free pairs per draft, default 0;
    ``content_free_cases``) and the training settings ``epochs`` (passes over the four
    cases of every pair; default 0.25, about one case per pair), ``batch_size`` (cases a step;
    default 4), ``lr``, ``save_every``; ``group`` (``case``, default, or ``pair``: each step
    takes whole pairs, their four cases together, ``by_pair``; then ``epochs`` counts passes
    over the pairs and ``batch_size`` pairs a step, default 1). The adapter keeps its own
    rank, alpha, dropout and layers. The start, the number of cases and the grouping are
    written down on the first run: a rerun that would resume the saved steps on another start,
    other cases or another grouping is refused."""
    folder, state = opts.out / "verdict-adapter", opts.out / "verdict"
    if folder.exists():
        return {"stage": "verdict", "status": "done", "adapter": folder.name}
    settings = dict(settings)
    refuse_shape("verdict", settings)
    settled = {"hold_out": int(settings.pop("hold_out", 0)), "nll_weight": float(settings.pop("nll_weight", 1.0)),
               "content_free": int(settings.pop("content_free", 0))}
    for key, value in settled.items():
        if value < 0:
            raise ValueError(f"verdict.{key} must be >= 0, got {value}")
    settled["group"] = settings.pop("group", "case")
    if settled["group"] not in ("case", "pair"):
        raise ValueError(f'verdict.group must be "case" or "pair", got {settled["group"]!r}')
    start, kept = settings.pop("start", None), settled
    per_pair = kept["group"] == "pair"
    lora = LoraSettings(seed=opts.seed, **{"epochs": 0.25, "batch_size": 1 if per_pair else 4, **settings})
    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = read_drafts(opts.shared)
    cases = verdict_cases(items, rows, kept["hold_out"])
    if not cases:
        raise ValueError(f"{opts.shared / 'drafts.jsonl'}: no usable two-answer draft past verdict.hold_out="
                         f"{kept['hold_out']} to train the verdict on")
    if kept["content_free"]:
        cases += content_free_cases(template, items, rows, kept["hold_out"], kept["content_free"], opts.seed)
    start = begun_start(opts.out, state, "verdict", start, len(cases), group=kept["group"])
    model = load_trainable(base, start)
    loss_fn = verdict_loss(tokenizer, template, items, cases, opts.seed, kept["nll_weight"])
    if kept["group"] == "pair":
        figures = train_resumable(model, len(cases) // 4, by_pair(loss_fn), lora, state, opts.stage_minutes * 60, log)
    else:
        figures = train_resumable(model, len(cases), loss_fn, lora, state, opts.stage_minutes * 60, log)
    done = figures["steps"] >= figures["planned_steps"]
    if done:
        save_adapter(model, folder, opts.base, template)
    trained = {k: getattr(lora, k) for k in ("epochs", "batch_size", "lr", "save_every", "seed")}
    return {"stage": "verdict", "status": "done" if done else "partial", "cases": len(cases),
            "pairs": len(cases) // 4 // (1 + kept["content_free"]), "settings": {**trained, "start": start, **kept},
            **figures}
