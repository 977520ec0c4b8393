"""What a judge's scores follow: the answers, the critique lines before them, or the order shown.

A generative judge writes its critique lines and then the scores. This probe asks, of a
trained adapter, which of three things its score tokens read, without sampling: on training
pairs with a usable draft, it writes the drafted judgment up to the score line and compares
the log-probability of the labelled scores (the preferred answer 7, the other 3) with that of
the reversed ones (3 and 7), in four settings:

- ``drafted``: the critique lines as drafted (written with the label as a hint, so the
  preferred answer's line reads better), the better answer shown first or second;
- ``swapped``: the same, with the two critique lines exchanged (each still quotes its own
  answer), so the better answer carries the worse one's critique.

A judge that scores the answers prefers the labelled scores in all four; one that copies the
critiques' tone prefers them with the drafted lines and the reversed ones with swapped lines;
one that scores positions prefers them when the better answer is first and not when second.
Summed over the two orders, a pair's margins take the pull of position out: the share of
pairs where they favour the labelled scores is what the judge reads from the answers.

Example::

    probe = score_probe(model, tokenizer, template, items, rows[:60])
    probe["drafted"]["first"]   # share of pairs whose labelled scores are likelier, better answer first
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from grm.templates import JudgeTemplate
from policy.logprobs import batch_logprobs
from spct.cold_start import Draft, draft_from_json, judgment_text
from spct.data import LabeledItem, make_example

HIGH, LOW = 7, 3


@torch.no_grad()
def label_margin(model, tokenizer, template: JudgeTemplate, labeled: LabeledItem, draft: Draft,
                 permutation: Sequence[int]) -> float:
    """log P(labelled scores) - log P(reversed scores) after ``draft``'s judgment text, shown in
    ``permutation`` order (the texts differ only in the score line)."""
    best = labeled.best
    labelled = tuple(HIGH if i == best else LOW for i in range(2))
    reversed_ = tuple(LOW if i == best else HIGH for i in range(2))
    examples = [make_example(tokenizer, template, labeled.item, permutation,
                             judgment_text(draft, permutation, scores, random.Random(0)))
                for scores in (labelled, reversed_)]
    logp, mask = batch_logprobs(model, examples)
    total = (logp * mask).sum(1)
    return float(total[0] - total[1])


def score_probe(model, tokenizer, template: JudgeTemplate, items: Sequence[LabeledItem],
                rows: Sequence[dict]) -> dict:
    """Per setting (``drafted``, ``swapped``) and position of the better answer (``first``,
    ``second``): the share of the usable two-answer ``rows`` whose labelled scores are likelier
    than the reversed ones, and the mean log-probability margin; and ``both_orders``: the
    share whose margins summed over the two orders favour the labelled scores (the verdict
    with the pull of position taken out)."""
    model.eval()
    margins: dict[str, dict[str, list[float]]] = {s: {"first": [], "second": []} for s in ("drafted", "swapped")}
    for row in rows:
        labeled = items[row["index"]]
        if row["reason"] or len(labeled.item.responses) != 2:
            continue
        draft = draft_from_json(row)
        for setting, d in (("drafted", draft), ("swapped", draft.exchanged())):
            for position, first in (("first", labeled.best), ("second", 1 - labeled.best)):
                margins[setting][position].append(
                    label_margin(model, tokenizer, template, labeled, d, (first, 1 - first)))
    def share(m: list[float]) -> dict:
        return {"pairs": len(m), "labelled_likelier": sum(x > 0 for x in m) / max(1, len(m))}

    out = {}
    for setting, by_position in margins.items():
        out[setting] = {position: {**share(m), "mean_margin": sum(m) / max(1, len(m))}
                        for position, m in by_position.items()}
        out[setting]["both_orders"] = share([a + b for a, b in zip(by_position["first"], by_position["second"])])
    return out
