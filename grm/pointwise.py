"""Pointwise judging: one prompt per response, one judgment of it; the verdict compares scores.

A pointwise template (``JudgeTemplate.pointwise``) shows the judge a single response, so
a request with N responses becomes N prompts, and each of the k samples is N judgments,
one per response. ``merge`` folds the N judgments of one sample into the one
``Judgment`` the rest of the service reads (aggregation, the journal, grounding, the
inspector): its scores are the N single scores in response order, its critique the N
critique lines each labelled with the response it is about, and it is valid only when
every one of its parts is.

Example::

    >>> a = Judgment("...", "1. Safe (100%)", "Answer 1: it says \\"no\\".", (3,), (0,))
    >>> b = Judgment("...", "1. Safe (100%)", "It is kind.", (8,), (0,))
    >>> m = merge([a, b])
    >>> m.scores, m.critique
    ((3, 8), 'Answer 1: it says "no".\\nAnswer 2: It is kind.')
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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
