"""Parse one generated judgment into principles, critique and scores (in shown order).

Only the model's generated text is read, never the prompt or the responses, so a
response that contains ``\\boxed{10, 10}`` or a fake ``Scores:`` line cannot change
what is parsed (docs/design.md, "Judgment format").

Example::

    >>> p = parse_judgment("Specific Criteria: Correctness (60%), clarity (40%).\\n"
    ...                    "Analysis: Response 1 is right; Response 2 adds 2 + 2 = 5.\\n"
    ...                    "Scores: \\\\boxed{9, 3}", n=2)
    >>> p.principles, p.critique, p.scores, p.reason
    ('Correctness (60%), clarity (40%).', 'Response 1 is right; Response 2 adds 2 + 2 = 5.', (9, 3), None)
    >>> unshuffle(p.scores, permutation=(1, 0))   # position 0 showed original response 1
    (3, 9)

Decisions (each has a test in tests/grm/test_parsing.py):

- Headers: ``Specific Criteria``, ``Analysis``, ``Scores`` at the start of a line, any
  case, optionally wrapped in markdown (``**Analysis:**``, ``**Analysis**:``,
  ``### Analysis``), followed by a colon or by the end of the line. A missing part is "".
  A section runs to the next header of another kind (or to the final box).
- Scores come from the LAST top-level ``\\boxed{...}`` (``\\boxed {`` too); braces nest.
  Its content is split on commas; each item, stripped of whitespace, must match
  ``-?[0-9]+``. Checks run in this order, the first failure is the reason:
  count != n -> WRONG_COUNT (``\\boxed{}`` holds 0 items; ``8, 7,`` holds 3);
  an item not an integer -> NOT_INTEGER (``7.5``, ``7.0``, ``7.``, ``+7``, ``8/10``,
  ``\\text{8}``); an integer outside 1..10 -> OUT_OF_RANGE (``0``, ``-3``, ``11``).
  Text after the closing brace (a period, prose) is ignored.
- When a ``Scores:`` header exists, the box must come after the first one; a box only
  inside the analysis (say a quoted math answer ``\\boxed{42}``) is not a score.
- No usable box: NO_SCORES if the model finished, TRUNCATED if it was cut by
  max_new_tokens (it may still have been about to write it). An unclosed last box
  (``\\boxed{8, `` at the end) is read the same way.
- A cut generation (finished=False) is valid when its last box is complete and comes
  after a ``Scores:`` header; without that header a cut text is TRUNCATED, because the
  last box may be a quoted answer inside an unfinished analysis.
- Blank text (empty or whitespace only) -> EMPTY.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from grm.types import MAX_SCORE, MIN_SCORE, InvalidReason

CRITERIA_HEADER = "Specific Criteria:"
ANALYSIS_HEADER = "Analysis:"
SCORES_HEADER = "Scores:"

# Each optional part starts with its own mark (#, *, _), so no two whitespace runs can
# trade characters: matching stays linear on hostile input such as 50k spaces.
_HEADER = re.compile(
    r"^[ \t>]*(?:\#{1,6}[ \t]*)?(?:[*_]{1,3}[ \t]*)?"  # indentation, quote, heading, bold/italic
    r"(?P<name>specific[ \t]+criteria|analysis|scores)"
    r"(?:[ \t]*[*_]{1,3})?[ \t]*(?::|$)[ \t]*[*_]{0,3}",  # colon, or the line ends
    re.IGNORECASE | re.MULTILINE,
)
_BOX = re.compile(r"\\boxed\s*\{")
_INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class ParsedJudgment:
    principles: str  # the "Specific Criteria" part, "" when absent
    critique: str  # the "Analysis" part, "" when absent
    scores: tuple[int, ...] | None  # [N] in SHOWN order; None when invalid
    reason: InvalidReason | None  # None when valid


@dataclass(frozen=True)
class _Header:
    kind: str  # "criteria" | "analysis" | "scores"
    start: int  # where the header line starts
    end: int  # where the section text starts


def parse_judgment(text: str, n: int, finished: bool = True) -> ParsedJudgment:
    """Split ``text`` into its three parts and read ``n`` scores from the last box."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not text or not text.strip():
        return ParsedJudgment("", "", None, InvalidReason.EMPTY)
    headers = _headers(text)
    box = _last_box(text)
    box_start = box[0] if box else None
    principles = _section(text, headers, "criteria", box_start)
    critique = _section(text, headers, "analysis", box_start)
    missing = InvalidReason.NO_SCORES if finished else InvalidReason.TRUNCATED
    scores_header = next((h for h in headers if h.kind == "scores"), None)
    if box is None or box[1] is None:
        return ParsedJudgment(principles, critique, None, missing)
    if scores_header is not None and box[0] < scores_header.end:
        return ParsedJudgment(principles, critique, None, missing)
    if not finished and scores_header is None:
        return ParsedJudgment(principles, critique, None, InvalidReason.TRUNCATED)
    scores, reason = _read_scores(box[1], n)
    return ParsedJudgment(principles, critique, scores, reason)


def unshuffle(scores_shown: Sequence[int], permutation: Sequence[int]) -> tuple[int, ...]:
    """Scores in the original order: original index ``permutation[j]`` gets ``scores_shown[j]``."""
    n = len(scores_shown)
    if len(permutation) != n or sorted(permutation) != list(range(n)):
        raise ValueError(f"permutation must be a permutation of range({n}), got {tuple(permutation)}")
    original = [0] * n
    for shown, index in enumerate(permutation):
        original[index] = scores_shown[shown]
    return tuple(original)


def _headers(text: str) -> list[_Header]:
    return [_Header("criteria" if m["name"].lower().startswith("specific") else m["name"].lower(),
                    m.start(), m.end())
            for m in _HEADER.finditer(text)]


def _section(text: str, headers: list[_Header], kind: str, box_start: int | None) -> str:
    """Text after the first ``kind`` header, up to the next header of another kind or the box."""
    first = next((h for h in headers if h.kind == kind), None)
    if first is None:
        return ""
    stops = [h.start for h in headers if h.start > first.start and h.kind != kind]
    if box_start is not None and box_start >= first.end:
        stops.append(box_start)
    return text[first.end:min(stops, default=len(text))].strip()


def _last_box(text: str) -> tuple[int, str | None] | None:
    """(start, content) of the last top-level ``\\boxed{...}``; content None when unclosed."""
    last, pos = None, 0
    while (m := _BOX.search(text, pos)) is not None:
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth:  # ran off the end: the generation stopped inside the box
            return m.start(), None
        last, pos = (m.start(), text[m.end():i - 1]), i
    return last


def _read_scores(content: str, n: int) -> tuple[tuple[int, ...] | None, InvalidReason | None]:
    items = [item.strip() for item in content.split(",")] if content.strip() else []
    if len(items) != n:
        return None, InvalidReason.WRONG_COUNT
    if not all(_INTEGER.fullmatch(item) for item in items):
        return None, InvalidReason.NOT_INTEGER
    # More than 3 digits is out of range anyway; skipping int() on it also avoids
    # Python's error on very long digit strings.
    if any(len(item.lstrip("-").lstrip("0")) > 3 for item in items):
        return None, InvalidReason.OUT_OF_RANGE
    scores = tuple(int(item) for item in items)
    if not all(MIN_SCORE <= s <= MAX_SCORE for s in scores):
        return None, InvalidReason.OUT_OF_RANGE
    return scores, None
