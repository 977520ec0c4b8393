"""Train the pointwise judge: each answer judged in its own prompt, ranked by its score.

Five trainings of the judge that reads both answers of a pair in one prompt learned the
format but left the verdict at a coin, while the same base with a scalar head, reading one
answer at a time, ranks three pairs in five. This stage trains the judge the way the scalar
model is trained. A pointwise template (``grm-english-point-v1``) shows one answer; the
judgment is the drafted principles, the answer's critique line and its score. The
answer's reward is the expected score the judge would write, read from its next-token
distribution over the digits 1..9 where the score goes (``expected_score``), and the
pair's loss is the Bradley-Terry loss ``-log sigmoid(r_preferred - r_other)``: the scalar
model's loss with the judge's own score as the scalar.

Each pair is trained once a pass with its critique sentences as drafted or exchanged
(a coin seeded by the pair): the drafted critiques were written knowing which answer is
preferred, and with the exchanged half a score that followed their tone would lose as
much as it gains, so only reading the answer lowers the loss. On drafted pairs the
judgment's SFT loss (mean token loss, the score digit left out, times ``nll_weight``) keeps
the format and teaches the critique line.

With ``blank_share`` a seeded share of the pairs comes once more with its other answer
replaced by a content-free one (``BLANKS``, or the start of the user's last turn echoed),
critiqued as saying nothing: a judge trained on real pairs alone learned what makes one real
answer better than another, but scored ":" about as high as the best answer. These
cases teach it to write that such an answer gives nothing and to score it below the real one.
With ``blank_critique="kept"`` the content-free answer keeps the critique sentence drafted
for the real answer it replaces and the case trains the Bradley-Terry term only: the critique
then says nothing of the answer's emptiness, so only reading the answer itself lowers the
loss, and no critique line that calls an answer empty is taught (one taught that way spread
to short real answers).

Example::

    cases = point_cases(items, read_drafts(Path("runs/en")), hold_out=60, seed=0)
    loss_fn = point_loss(tokenizer, template, items, cases, seed=0)
    train_resumable(model, len(cases), loss_fn, LoraSettings(epochs=1, batch_size=4), Path("runs/p/point"))
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from grm.pointwise import SCORES, digit_ids
from grm.prompts import one_response
from grm.seeds import mix_seed
from grm.templates import JudgeTemplate, load_template
from grm.types import ScoreInput
from policy.logprobs import Example, batch_logprobs
from spct.cold_start import Draft, draft_from_json, draft_scores, judgment_text
from spct.data import LabeledItem, make_example
from spct.drafting import read_drafts
from spct.lora_sft import LoraSettings, load_trainable, save_adapter, train_resumable
from spct.verdict import begun_start, refuse_shape, usable_drafts

POINT_TEMPLATE = "grm-english-point-v1"
# Content-free answers for the blank cases (none of them is an attack of grm.eval.attacks).
BLANKS = (".", "...", "-", "?", "!", "Sure.", "Okay.", "Yes.", "Answer:", "Here is my answer:", "Good question!",
          "I will explain below.", "Let me think about it.", "Hmm, let me see.", "See above.", "As requested:")
BLANK_CRITIQUES = ("The answer says nothing that addresses the request.",
                   "The answer gives the user no content to use.",
                   "The answer is empty of substance and does not respond to the question.")


@dataclass(frozen=True)
class PointCase:
    """A pair as one training case: both answers, each with one critique line."""

    index: int  # of the labelled pair in the training items
    draft: Draft  # as drafted, or with its critiques exchanged
    exchanged: bool
    blank: str = ""  # a blank case: the other answer replaced by this content-free text
    bt_only: bool = False  # trained by the Bradley-Terry term alone (no SFT of its judgments)


BLANK_CRITIQUE_MODES = ("empty", "kept")


def blank_case(item: LabeledItem, index: int, draft: Draft, seed: int, critique: str = "empty") -> PointCase:
    """The pair's preferred answer against a content-free one, critiques as drafted or
    exchanged by a coin seeded by the pair. ``critique``: "empty" gives the content-free
    answer a critique saying it gives nothing; "kept" leaves it the sentence drafted for the
    real answer it replaces, and the case is trained by the Bradley-Terry term only."""
    if critique not in BLANK_CRITIQUE_MODES:
        raise ValueError(f"blank critique must be one of {BLANK_CRITIQUE_MODES}, got {critique!r}")
    rng = random.Random(mix_seed("point-blank", seed, index))
    last = item.item.conversation[-1].content.strip() if item.item.conversation else ""
    echo = " ".join(last.split()[:rng.randint(3, 8)])
    text = echo if echo and rng.random() < 0.2 else rng.choice(BLANKS)
    other = 1 - item.best
    critiques, quotes = list(draft.critiques), list(draft.quotes)
    empty_line = rng.choice(BLANK_CRITIQUES)  # drawn in both modes: the exchange coin below stays the same
    if critique == "empty":
        critiques[other] = empty_line
    quotes[other] = text
    blank = Draft(draft.principles, tuple(critiques), tuple(quotes))
    exchanged = rng.random() < 0.5
    return PointCase(index, blank.exchanged() if exchanged else blank, exchanged, text, critique == "kept")


def point_cases(items: Sequence[LabeledItem], rows: Sequence[dict], hold_out: int, seed: int,
                blank_share: float = 0.0, blank_critique: str = "empty") -> list[PointCase]:
    """One case per usable two-answer draft after the first ``hold_out``, its critiques
    exchanged or not by a coin seeded by the pair; then a blank case (``blank_case``) for a
    ``blank_share`` of them, chosen by another seeded coin."""
    cases, blanks = [], []
    for row in usable_drafts(items, rows, hold_out):
        draft = draft_from_json(row)
        exchanged = random.Random(mix_seed("point-exchange", seed, row["index"])).random() < 0.5
        cases.append(PointCase(row["index"], draft.exchanged() if exchanged else draft, exchanged))
        if random.Random(mix_seed("point-blank-share", seed, row["index"])).random() < blank_share:
            blanks.append(blank_case(items[row["index"]], row["index"], draft, seed, blank_critique))
    return cases + blanks


def point_example(tokenizer, template: JudgeTemplate, labeled: LabeledItem, case: PointCase, answer: int,
                  seed: int) -> tuple[Example, int]:
    """Answer ``answer`` of the case's pair alone, its judgment as the reply (+ EOS), and the
    target index of its score digit. Both answers of a pair get the same principle weights."""
    alone = Draft(case.draft.principles, (case.draft.critiques[answer],), (case.draft.quotes[answer],))
    score = draft_scores(labeled.best, 2, random.Random(mix_seed("point-scores", seed, case.index)))[answer]
    text = judgment_text(alone, (0,), (score,), random.Random(mix_seed("point-weights", seed, case.index)))
    shown = one_response(labeled.item, answer)
    if case.blank and answer != labeled.best:
        shown = ScoreInput(shown.conversation, (case.blank,), shown.principles, shown.reference)
    example = make_example(tokenizer, template, shown, (0,), text)
    digit = len(example.target_ids) - 3  # ... "{", the digit, "}", EOS: scores from draft_scores are one digit
    if tokenizer.decode(example.target_ids[digit]) != str(score):
        raise ValueError(f"the score {score} is not one token before '}}' in the judgment of pair {case.index}")
    return example, digit


def expected_score(logits: torch.Tensor, digit_ids: Sequence[int]) -> torch.Tensor:  # [B, V] -> [B]
    """The mean score under the next-token distribution restricted to the digits 1..9."""
    p = logits[:, list(digit_ids)].softmax(-1)
    return p @ torch.tensor(SCORES, dtype=p.dtype, device=p.device)


def point_rewards(model, tokenizer, template: JudgeTemplate, items: Sequence[LabeledItem],
                  cases: Sequence[PointCase], seed: int):
    """(rewards ``[2B]``: preferred, other, preferred, ...; SFT token loss per row ``[2B]``; tokens)."""
    examples, at = [], []
    for case in cases:
        labeled = items[case.index]
        for answer in (labeled.best, 1 - labeled.best):
            example, digit = point_example(tokenizer, template, labeled, case, answer, seed)
            examples.append(example), at.append(digit)
    logp, mask, logits = batch_logprobs(model, examples, logits_at=at)
    mask = mask.clone()
    mask[torch.arange(len(at)), torch.tensor(at)] = 0  # the score digit is trained by the BT term only
    nll = -(logp * mask).sum(1) / mask.sum(1)
    return expected_score(logits, digit_ids(tokenizer)), nll, int(mask.sum()) + len(at)


def point_loss(tokenizer, template: JudgeTemplate, items: Sequence[LabeledItem], cases: Sequence[PointCase],
               seed: int, nll_weight: float = 1.0):
    """``loss_fn(model, indices) -> (loss, tokens)`` for ``train_resumable``: per case the
    Bradley-Terry loss on the two answers' expected scores, plus ``nll_weight`` times the
    two judgments' mean SFT loss when the critiques are as drafted (and the case is not
    ``bt_only``); averaged over the batch."""
    def loss(model, indices: list[int]) -> tuple[torch.Tensor, int]:
        chosen = [cases[i] for i in indices]
        r, nll, tokens = point_rewards(model, tokenizer, template, items, chosen, seed)
        drafted = torch.tensor([0.0 if c.exchanged or c.bt_only else 1.0 for c in chosen], dtype=nll.dtype)
        terms = -F.logsigmoid(r[0::2] - r[1::2]) + nll_weight * drafted * (nll[0::2] + nll[1::2]) / 2
        return terms.mean(), tokens
    return loss


@torch.no_grad()
def point_correct(model, tokenizer, template: JudgeTemplate, items: Sequence[LabeledItem],
                  cases: Sequence[PointCase], seed: int, batch: int = 4) -> list[bool]:
    """Per case: does the preferred answer get the strictly higher expected score?"""
    model.eval()
    out = []
    for start in range(0, len(cases), batch):
        r, _, _ = point_rewards(model, tokenizer, template, items, cases[start:start + batch], seed)
        out += (r[0::2] > r[1::2]).tolist()
    return out


def point_stage(opts, settings: dict, items: list[LabeledItem], base: str, log=print) -> dict:
    """The ``point`` stage of ``spct.english``: from ``point.start`` (default: this run's latest
    adapter of harden, rft, sft) trains the pointwise judge on every usable two-answer draft
    after ``point.hold_out`` and writes ``point-adapter/`` (its template the pointwise one).

    ``settings`` (``--set point.KEY``): ``start``, ``hold_out`` (default 0), ``nll_weight``
    (default 1), ``blank_share`` (default 0), ``blank_critique`` ("empty" or "kept", see
    ``blank_case``; default "empty"), ``epochs`` (default 1), ``batch_size`` (pairs a step, default 4), ``lr``
    (default 3e-4), ``save_every``. The adapter keeps its own rank, alpha, dropout and layers.
    A rerun that would resume on another start or other cases is refused. With ``hold_out``,
    the report holds the share of held-out pairs whose preferred answer the trained judge's
    expected score puts strictly higher (critiques as drafted and as exchanged, and against a
    content-free answer critiqued as empty and with the real answer's critique kept)."""
    folder, state = opts.out / "point-adapter", opts.out / "point"
    if folder.exists():
        return {"stage": "point", "status": "done", "adapter": folder.name}
    settings = dict(settings)
    refuse_shape("point", settings)
    kept = {"hold_out": int(settings.pop("hold_out", 0)), "nll_weight": float(settings.pop("nll_weight", 1.0)),
            "blank_share": float(settings.pop("blank_share", 0.0))}
    for key, value in kept.items():
        if value < 0:
            raise ValueError(f"point.{key} must be >= 0, got {value}")
    if kept["blank_share"] > 1:
        raise ValueError(f"point.blank_share must be at most 1, got {kept['blank_share']}")
    critique = str(settings.pop("blank_critique", "empty"))
    if critique not in BLANK_CRITIQUE_MODES:
        raise ValueError(f"point.blank_critique must be one of {BLANK_CRITIQUE_MODES}, got {critique!r}")
    template = load_template(POINT_TEMPLATE)
    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = read_drafts(opts.shared)
    cases = point_cases(items, rows, kept["hold_out"], opts.seed, kept["blank_share"], critique)
    if not cases:
        raise ValueError(f"{opts.shared / 'drafts.jsonl'}: no usable two-answer draft past point.hold_out="
                         f"{kept['hold_out']} to train on")
    start = begun_start(opts.out, state, "point", settings.pop("start", None), len(cases))
    lora = LoraSettings(seed=opts.seed, **{"epochs": 1.0, "batch_size": 4, "lr": 3e-4, **settings})
    model = load_trainable(base, start)
    lengths = [len(point_example(tokenizer, template, items[c.index], c, 0, opts.seed)[0].prompt_ids) for c in cases]
    loss_fn = point_loss(tokenizer, template, items, cases, opts.seed, kept["nll_weight"])
    figures = train_resumable(model, len(cases), loss_fn, lora, state, opts.stage_minutes * 60, log, lengths)
    trained = {k: getattr(lora, k) for k in ("epochs", "batch_size", "lr", "save_every", "seed")}
    entry = {"stage": "point", "status": "partial", "pairs": len(cases), "start": str(start),
             "settings": {**trained, **kept, "blank_critique": critique}, **figures}
    if figures["steps"] < figures["planned_steps"]:
        return entry
    save_adapter(model, folder, opts.base, template)
    if kept["hold_out"]:
        entry["held_out"] = held_out_shares(model, tokenizer, template, items, rows, kept["hold_out"], opts.seed)
    return {**entry, "status": "done"}


def held_out_shares(model, tokenizer, template: JudgeTemplate, items: Sequence[LabeledItem], rows: Sequence[dict],
                    hold_out: int, seed: int) -> dict:
    """On the first ``hold_out`` usable drafts (left out of training): the share of pairs
    whose preferred answer gets the strictly higher expected score, with the critiques as
    drafted and as exchanged; and against a content-free answer in place of the other one,
    its critique saying it is empty ("blank") or the one drafted for the real answer ("blank_kept")."""
    drafts = [(row["index"], draft_from_json(row)) for row in usable_drafts(items, rows, 0)[:hold_out]]
    shares = {}
    for name, exchanged in (("drafted", False), ("exchanged", True)):
        cases = [PointCase(i, d.exchanged() if exchanged else d, exchanged) for i, d in drafts]
        correct = point_correct(model, tokenizer, template, items, cases, seed)
        shares[name] = sum(correct) / len(correct)
    for name, critique in (("blank", "empty"), ("blank_kept", "kept")):
        blanks = [blank_case(items[i], i, d, seed, critique) for i, d in drafts]
        correct = point_correct(model, tokenizer, template, items, blanks, seed)
        shares[name] = sum(correct) / len(correct)
    return {"pairs": len(drafts), **shares}
