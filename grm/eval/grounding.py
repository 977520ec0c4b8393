"""Grounding: do the words a critique quotes appear in the answer it talks about?

A judge that reads its input quotes it; one that does not invents quotes ("the answer
says 'toat'"). A critique line that names an answer (``Answer 2: ...`` or
``Response 2 ...``, by the position it was shown at) is checked against that answer's
text; a line that names none is checked against every answer and the conversation.
A quoted fragment is text between double quotes (straight or curly) of at least
``MIN_QUOTE_CHARS`` characters; it is grounded when it appears in the text it is checked
against, compared case-insensitively with runs of whitespace made single and the
fragment's outer punctuation dropped (a quote that ends a sentence often takes the
period with it).

Example::

    >>> check_quotes('Answer 1: says "boil it" well.\\nAnswer 2: says "fry it".',
    ...              ["Boil it for 8 minutes.", "No."])
    QuoteCheck(grounded=1, total=2)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from grm.prompts import shown_response

MIN_QUOTE_CHARS = 2
_QUOTE = re.compile(r'"([^"\n]+)"|\u201c([^\u201d\n]+)\u201d')
_LINE_LABEL = re.compile(r"^[\s*#>-]*(?:answer|response)\s*(\d+)\b", re.IGNORECASE)
_EDGE_PUNCTUATION = " \t.,;:!?'`"


@dataclass(frozen=True)
class QuoteCheck:
    grounded: int  # quoted fragments found in the text they refer to
    total: int  # quoted fragments

    def __add__(self, other: "QuoteCheck") -> "QuoteCheck":
        return QuoteCheck(self.grounded + other.grounded, self.total + other.total)


def normalize(text: str) -> str:
    return " ".join(text.split()).lower()


def quotes(line: str) -> list[str]:
    """The quoted fragments of one line, outer punctuation stripped, short ones left out."""
    found = (a or b for a, b in _QUOTE.findall(line))
    fragments = (normalize(f).strip(_EDGE_PUNCTUATION) for f in found)
    return [f for f in fragments if len(f) >= MIN_QUOTE_CHARS]


def named_answer(line: str) -> int | None:
    """The 1-based position a critique line talks about, or None."""
    m = _LINE_LABEL.match(line)
    return int(m.group(1)) if m else None


def check_quotes(critique: str, shown: Sequence[str], context: str = "") -> QuoteCheck:
    """Count ``critique``'s quoted fragments and those found where they belong.

    ``shown`` holds the answers in the order the judge saw them (position 1 first).
    """
    answers = [normalize(a) for a in shown]
    everything = " \n ".join([*answers, normalize(context)])
    result = QuoteCheck(0, 0)
    for line in critique.splitlines():
        position = named_answer(line)
        if position is not None and 1 <= position <= len(answers):
            source = answers[position - 1]
        elif position is not None:  # names an answer that was not shown: nothing grounds it
            source = ""
        else:
            source = everything
        fragments = quotes(line)
        result += QuoteCheck(sum(f in source for f in fragments), len(fragments))
    return result


def grounding_report(kept, sampled, template) -> dict:
    """Quote grounding over every sampled judgment of an evaluation.

    ``kept`` are the items (``.input`` a ScoreInput, ``.source``), ``sampled`` their
    ScoreResults; ``template`` cuts and defangs the responses as the judge saw them
    (``grm.prompts.shown_response``). Returns the share of quoted fragments found where
    they belong, the share of judgments that quote at all, and both per source.
    """
    def tally(rows) -> dict:
        total, quoting, judgments = QuoteCheck(0, 0), 0, 0
        for item, result in rows:
            shown_all = [shown_response(template, r) for r in item.input.responses]
            context = " ".join(m.content for m in item.input.conversation)
            for j in result.judgments:
                check = check_quotes(j.critique, [shown_all[i] for i in j.permutation], context)
                total += check
                quoting += check.total > 0
                judgments += 1
        return {"quotes": total.total, "grounded": total.grounded,
                "share": total.grounded / total.total if total.total else None,
                "judgments": judgments, "judgments_quoting": quoting / judgments if judgments else None}

    rows = list(zip(kept, sampled))
    sources = sorted({(item.source or "").split(":")[0] for item in kept})
    report = tally(rows)
    if len(sources) > 1 or sources[0]:
        report["by_source"] = {s: tally([(i, r) for i, r in rows if (i.source or "").split(":")[0] == s])
                               for s in sources}
    return report
