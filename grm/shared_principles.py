"""Principles once per query: one principles draft shared by every input of a conversation.

In a GRPO step the completions of one prompt are judged as separate inputs with the same
conversation, and every sample of every input writes the query's principles again. With
``SamplingOptions.shared_principles`` the judge instead draws the principles part once per
query (``draft_key``): a judgment sampled from a prompt that shows the conversation and N
empty responses (``draft_item``), cut before its analysis header (``principles_prefix``).
Every sample of every input with that key then continues from those tokens, placed at the
start of the judge's reply, and writes only the critique and the scores.

The draft depends only on the key (the conversation, reference, N and the sampling
options), never on which other inputs share the engine call, so a result stays the same
for a seed whether its input is scored alone or batched. An input with caller-given
principles has nothing to share and is judged as usual; so is one whose draft never
reached an analysis header within ``DRAFT_MAX_TOKENS``.

Example::

    key = draft_key(plan)                         # None when the option is off
    ids = encode_prompt(tok, build_judge_content(template, draft_item(plan.item), range(n)))
    prefix = principles_prefix(tok, completion.token_ids)   # () when no header was found
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from grm.types import SamplingOptions, ScoreInput

DRAFT_MAX_TOKENS = 160  # the bundled GRM's principles take about 60 tokens; past this, give up
DRAFT_STAGE = "shared-principles"  # mixed into the draft's seed
_ANALYSIS = re.compile(r"^[ \t>#*_]*analysis[ \t*_]*(?::|$)", re.IGNORECASE | re.MULTILINE)
_CRITERIA = re.compile(r"^[ \t>#*_]*specific[ \t]+criteria", re.IGNORECASE | re.MULTILINE)


def draft_key(item: ScoreInput, sampling: SamplingOptions) -> tuple | None:
    """What a shared draft depends on; None when this input does not share principles."""
    if not sampling.shared_principles or item.principles is not None:
        return None
    return (item.conversation, item.reference, len(item.responses), sampling.temperature, sampling.top_p,
            sampling.max_new_tokens, sampling.seed)


def draft_item(item: ScoreInput) -> ScoreInput:
    """The input the draft is sampled from: the same conversation, its N responses left empty,
    so the principles can depend on the query but on no one response."""
    return ScoreInput(item.conversation, [""] * len(item.responses), reference=item.reference)


def principles_prefix(tokenizer: Any, token_ids: Sequence[int]) -> tuple[int, ...]:
    """The draft's tokens up to the line break before its analysis header; () when the draft
    has no criteria header before an analysis header (the samples then write their own)."""
    cut = None
    for t in range(1, len(token_ids) + 1):
        if _ANALYSIS.search(tokenizer.decode(token_ids[:t], skip_special_tokens=True)):
            cut = t - 1
            break
    if cut is None:
        return ()
    while cut > 0 and not tokenizer.decode(token_ids[:cut], skip_special_tokens=True).endswith("\n"):
        cut -= 1
    head = tokenizer.decode(token_ids[:cut], skip_special_tokens=True)
    return tuple(token_ids[:cut]) if _CRITERIA.search(head) else ()
