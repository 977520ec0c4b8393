"""Pointwise judging: one prompt per response, one judgment of it; the verdict compares scores.

A pointwise template (``JudgeTemplate.pointwise``) shows the judge a single response, so
a request with N responses becomes N prompts, and each of the k samples is N judgments,
one per response. ``merge`` folds the N judgments of one sample into the one
``Judgment`` the rest of the service reads (aggregation, the journal, grounding, the
inspector): its scores are the N single scores in response order, its critique the N
critique lines each labelled with the response it is about, and it is valid only when
every one of its parts is.

On an engine that can read (``next_token_logprobs``, the in-process engine), ``read_expected``
then gives every valid judgment its expected scores: per response, the mean score under the
judge's next-token distribution over 1..9 at the place it wrote that score (the prompt and
the judgment up to its box, read once more). A judge trained to rank by that distribution
(the ``point`` training stage) often writes the same integer for two answers; the expected
scores keep the difference (``grm.aggregation`` breaks tied votes with them).

Example::

    >>> a = Judgment("...", "1. Safe (100%)", "Answer 1: it says \\"no\\".", (3,), (0,))
    >>> b = Judgment("...", "1. Safe (100%)", "It is kind.", (8,), (0,))
    >>> m = merge([a, b])
    >>> m.scores, m.critique
    ((3, 8), 'Answer 1: it says "no".\\nAnswer 2: It is kind.')
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

from grm.types import Judgment

# A line that opens by naming the one response it saw ("Answer 1:", "**Response 1** -").
_OWN_LABEL = re.compile(r"^[\s*#>-]*(?:answer|response)\s*1\b[\s*:.,-]*", re.IGNORECASE)


def relabel(critique: str, position: int) -> str:
    """The critique of a response judged alone, its lines labelled ``Answer <position>:``
    (a line that named the one answer it saw is renamed, any other line prefixed)."""
    return "\n".join(f"Answer {position}: {_OWN_LABEL.sub('', line, count=1).strip()}"
                     for line in critique.splitlines() if line.strip())


def merge(parts: Sequence[Judgment]) -> Judgment:
    """One sample's judgments of each response alone (in response order) as one judgment
    of all of them; invalid, with the first invalid part's reason, when any part is."""
    bad = next((j for j in parts if not j.valid), None)
    return Judgment(
        text="\n\n".join(f"[Answer {i}]\n{j.text}" for i, j in enumerate(parts, 1)),
        principles="\n".join(f"For Answer {i}:\n{j.principles}" for i, j in enumerate(parts, 1) if j.principles),
        critique="\n".join(line for i, j in enumerate(parts, 1) if (line := relabel(j.critique, i))),
        scores=None if bad else tuple(j.scores[0] for j in parts),
        permutation=tuple(range(len(parts))),
        reason=bad.reason if bad else None,
        num_tokens=sum(j.num_tokens for j in parts))


SCORES = tuple(range(1, 10))  # the one-token scores an expected score is read over


def digit_ids(tokenizer) -> list[int]:
    """The token ids of the scores 1..9, each one token (else a ValueError)."""
    ids = [tokenizer(str(s), add_special_tokens=False).input_ids for s in SCORES]
    if any(len(i) != 1 for i in ids):
        raise ValueError("an expected score needs each of the scores 1..9 to be one token")
    return [i[0] for i in ids]


def expected_value(logprobs: Sequence[float]) -> float:
    """The mean score under a next-token distribution restricted to the scores 1..9
    (``logprobs`` of ``digit_ids`` in order; renormalised over them)."""
    top = max(logprobs)
    weights = [math.exp(v - top) for v in logprobs]
    return sum(s * w for s, w in zip(SCORES, weights)) / sum(weights)


BOX = "\\boxed{"


def score_position(tokenizer, token_ids: Sequence[int]) -> int | None:
    """The index in ``token_ids`` of the token that starts the score: the first one after the
    last box opener. None without a box, or when no token boundary falls right after it."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    at = text.rfind(BOX)
    if at < 0:
        return None
    cut, low, high = at + len(BOX), 0, len(token_ids)
    while low < high:  # the shortest prefix whose text reaches the cut
        middle = (low + high) // 2
        if len(tokenizer.decode(token_ids[:middle], skip_special_tokens=True)) >= cut:
            high = middle
        else:
            low = middle + 1
    if low >= len(token_ids) or tokenizer.decode(token_ids[:low], skip_special_tokens=True) != text[:cut]:
        return None
    return low


def read_expected(engine: Any, drawn: Sequence[Sequence[Any]], heads: Sequence[tuple[int, ...]]) -> list[list[Any]]:
    """``drawn[j]``: plan j's samples (``grm.judge.Sample``) whose parts continued ``heads[j]``.
    Returns them with ``expected_scores`` on every valid judgment whose parts all wrote a score
    of 1..9 at a clean token boundary; the others unchanged. One engine call reads them all."""
    tokenizer = engine.tokenizer
    try:
        digits = digit_ids(tokenizer)
    except ValueError:  # a vocabulary without one-token scores: nothing to read
        return [list(samples) for samples in drawn]
    sequences, owners = [], []
    for j, (samples, head) in enumerate(zip(drawn, heads)):
        for s, sample in enumerate(samples):
            if not sample.judgment.valid or not sample.parts or max(sample.judgment.scores) > SCORES[-1]:
                continue
            cuts = [score_position(tokenizer, completion.token_ids) for _, completion in sample.parts]
            if None not in cuts:
                sequences += [prompt.ids + tuple(head) + tuple(completion.token_ids[:cut])
                              for (prompt, completion), cut in zip(sample.parts, cuts)]
                owners.append((j, s, len(cuts)))
    read = iter(engine.next_token_logprobs(sequences, digits) if sequences else [])
    out = [list(samples) for samples in drawn]
    for j, s, parts in owners:
        expected = tuple(expected_value(next(read)) for _ in range(parts))
        out[j][s] = dataclasses.replace(out[j][s], judgment=dataclasses.replace(out[j][s].judgment,
                                                                                 expected_scores=expected))
    return out
