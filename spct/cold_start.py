"""A teacher-free cold start: judgments for labelled pairs, drafted by the base model in pieces.

A small chat model does not write the judge's format on its own, but it writes one short
English piece well when the question is narrow and the start of its answer is given. So
each training pair gets three short generations, each bounded (a few dozen tokens, cut at
the first line or sentence end):

- principles: "Write two short principles a good answer to this request must follow.",
  the answer begun as ``1. A good answer``;
- one critique sentence per response, asked with the label as a hint ("say what this answer
  does well" for the preferred one, "what is wrong with it" for the other), begun as
  ``The answer``.

Then the pieces are filtered (principles must read as principles; a critique must quote only
words that are in its response, ``grm.eval.grounding``) and assembled in the judge's format, each
critique line opening with a quote of its response's first words, and with scores drawn so
the preferred response is higher by at least 2. Both response orders of a pair become
training examples (against position bias). The label decides the scores: nothing here
needs a stronger judge.

A pair dropped for a missing or ungrounded piece can be drafted again (``previous``): only
the pieces that failed are drawn anew, with fresh seeds, and the rest are kept.

Example::

    drafts = draft_pieces(engine, items, seed=0)          # one Draft per item (ok or with a reason)
    text = judgment_text(drafts[0], permutation=(1, 0), rng=random.Random(0))
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from grm.engine import GenerationRequest
from grm.eval.grounding import check_quotes
from grm.prompts import encode_prompt, keep_tail, shown_response
from grm.seeds import mix_seed
from grm.templates import JudgeTemplate
from grm.types import ScoreInput
from spct.data import LabeledItem

PRINCIPLE_START = "1. A good answer"
CRITIQUE_START = "The answer"
PRINCIPLE_TOKENS = 56
CRITIQUE_TOKENS = 40
DRAFT_TEMPERATURE = 0.7
QUOTE_WORDS = 8
_NUMBERED = re.compile(r"^\s*(\d)[.)]\s*(.+?)\s*$")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
WEIGHTS = {1: [(100,)], 2: [(50, 50), (60, 40), (70, 30)], 3: [(40, 30, 30), (50, 30, 20)]}


@dataclass(frozen=True)
class Draft:
    """The pieces drafted for one labelled pair, in the data's response order."""

    principles: tuple[str, ...]  # each "A good answer ..." without its number or weight
    critiques: tuple[str, ...]  # [N] one sentence each, starting "The answer"
    quotes: tuple[str, ...]  # [N] the first words of each response as the judge sees it
    reason: str = ""  # "" when usable, else why the pair was dropped
    tokens: int = 0  # tokens generated for this pair

    @property
    def ok(self) -> bool:
        return not self.reason

    def exchanged(self) -> "Draft":
        """The same draft with the two critique sentences exchanged (each quote stays with its
        own response): the better answer now carries the worse one's critique."""
        return Draft(self.principles, tuple(reversed(self.critiques)), self.quotes, self.reason, self.tokens)

    def to_json(self) -> dict:
        return asdict(self)


def _chat_prompt(tokenizer, content: str, start: str) -> tuple[int, ...]:
    """A user turn, then the assistant's answer begun with ``start``."""
    ids = encode_prompt(tokenizer, content)
    return tuple(ids + tokenizer(start, add_special_tokens=False).input_ids)


def query_text(template: JudgeTemplate, item: ScoreInput) -> str:
    """The conversation the drafts talk about, cut like the judge's prompt cuts it."""
    turns = "\n\n".join(f"{template.role_labels[m.role]}: {m.content}" for m in item.conversation)
    return keep_tail(turns, template.max_conversation_chars)


def last_turn(template: JudgeTemplate, item: ScoreInput) -> str:
    """The user's last message, cut to the template's conversation cap (a draft needs no more)."""
    return keep_tail(item.conversation[-1].content, template.max_conversation_chars)


def principle_prompt(template: JudgeTemplate, item: ScoreInput) -> str:
    return (f"Here is a message someone sent to an assistant:\n\"\"\"\n{last_turn(template, item)}\n\"\"\"\n"
            "Write two short principles that a good answer to this message must follow.")


def critique_prompt(template: JudgeTemplate, item: ScoreInput, response: str, preferred: bool) -> str:
    ask = ("In one sentence, say what this answer does well." if preferred
           else "In one sentence, say what is wrong with this answer.")
    return (f"Here is a message someone sent to an assistant:\n\"\"\"\n{last_turn(template, item)}\n\"\"\"\n"
            f"Here is an answer to it:\n\"\"\"\n{shown_response(template, response)}\n\"\"\"\n{ask}")


def read_principles(generated: str) -> list[str]:
    """Numbered principles from a generation begun with ``PRINCIPLE_START``; stops at a blank line."""
    out = []
    for line in (PRINCIPLE_START + generated).split("\n"):
        m = _NUMBERED.match(line)
        if not line.strip():
            if out:
                break
            continue
        if not m or int(m.group(1)) != len(out) + 1:
            break
        text = m.group(2).rstrip()
        words = len(text.split())
        if not text.lower().startswith("a good answer") or not 5 <= words <= 30 or '"' in text:
            break
        out.append(text if text.endswith(".") else text.rstrip(",;:") + ".")
        if len(out) == 3:
            break
    return out


def read_critique(generated: str) -> str | None:
    """The first sentence of a generation begun with ``CRITIQUE_START``, or None if unusable."""
    text = (CRITIQUE_START + generated).split("\n")[0].strip()
    m = _SENTENCE_END.search(text)
    if m is not None:
        sentence = text[:m.end()]
    elif ", " in text:  # cut by the token budget: end it at its last complete clause
        sentence = text[:text.rindex(", ")] + "."
    else:
        return None
    if not 5 <= len(sentence.split()) <= 40 or re.search(r"\b(answer|response)\s*\d", sentence, re.I):
        return None
    return sentence


def first_words(shown: str, limit: int = QUOTE_WORDS) -> str:
    """The opening words of a response (at most ``limit``, within its first line and sentence)."""
    line = next((ln.strip() for ln in shown.split("\n") if ln.strip()), "")
    m = _SENTENCE_END.search(line)
    sentence = line[:m.end()] if m else line
    words = sentence.replace('"', "'").split()[:limit]
    return " ".join(words)


def draft_pieces(engine, template: JudgeTemplate, items: Sequence[LabeledItem], seed: int,
                 indices: Sequence[int] | None = None, previous: Sequence[Draft] | None = None,
                 attempt: int = 0) -> list[Draft]:
    """Draft principles and critiques for every item in one engine call (wide batches).

    With ``previous`` (an earlier, rejected draft per item) only its failed pieces are drawn
    again, with seeds of their own for ``attempt`` (>= 1); the pieces that passed are kept."""
    tok = engine.tokenizer
    indices = list(indices) if indices is not None else list(range(len(items)))
    previous = list(previous) if previous is not None else [None] * len(items)
    again = (attempt,) if attempt else ()
    requests, plans = [], []
    for index, lab, before in zip(indices, items, previous):
        item = lab.item
        principles, critiques = _pieces_to_draft(template, item, before)
        plans.append((principles, critiques))
        if principles:
            requests.append(GenerationRequest(_chat_prompt(tok, principle_prompt(template, item), PRINCIPLE_START),
                                              temperature=DRAFT_TEMPERATURE, max_new_tokens=PRINCIPLE_TOKENS,
                                              seed=mix_seed("cold-start", seed, index, "principles", *again)))
        for r in critiques:
            prompt = critique_prompt(template, item, item.responses[r], preferred=r == lab.best)
            requests.append(GenerationRequest(_chat_prompt(tok, prompt, CRITIQUE_START),
                                              temperature=DRAFT_TEMPERATURE, max_new_tokens=CRITIQUE_TOKENS,
                                              seed=mix_seed("cold-start", seed, index, "critique", r, *again)))
    out = iter(engine.generate(requests) if requests else [])
    drafts = []
    for lab, before, (principles, critiques) in zip(items, previous, plans):
        tokens = before.tokens if before is not None else 0
        found = list(before.principles) if before is not None else []
        lines = list(before.critiques) if before is not None else [""] * len(lab.item.responses)
        if principles:
            generated = next(out)[0]
            found, tokens = read_principles(generated.text), tokens + len(generated.token_ids)
        for r in critiques:
            generated = next(out)[0]
            lines[r], tokens = read_critique(generated.text), tokens + len(generated.token_ids)
        drafts.append(_assemble_draft(template, lab.item, found, lines, tokens))
    return drafts


def _pieces_to_draft(template: JudgeTemplate, item: ScoreInput, before: Draft | None) -> tuple[bool, list[int]]:
    """Whether the principles, and which responses' critiques, still need drafting."""
    if before is None:
        return True, list(range(len(item.responses)))
    shown = [shown_response(template, r) for r in item.responses]
    return not before.principles, [r for r, (line, text) in enumerate(zip(before.critiques, shown))
                                   if not line or not _grounded(line, text)]


def _assemble_draft(template: JudgeTemplate, item: ScoreInput, found: Sequence[str],
                    lines: Sequence[str | None], tokens: int) -> Draft:
    shown = [shown_response(template, r) for r in item.responses]
    quotes = tuple(first_words(s) for s in shown)
    reason = ""
    if not found:
        reason = "no_principles"
    elif any(not line for line in lines):
        reason = "no_critique"
    elif not all(_grounded(line, s) for line, s in zip(lines, shown)):
        reason = "ungrounded_quote"
    elif any(len(q.split()) < 2 for q in quotes):
        reason = "short_response"
    return Draft(tuple(found), tuple(line or "" for line in lines), quotes, reason, tokens)


def _grounded(line: str, shown: str) -> bool:
    check = check_quotes(f"Answer 1: {line}", [shown])
    return check.grounded == check.total


def draft_scores(best: int, n: int, rng: random.Random) -> tuple[int, ...]:
    """Scores in the data's order: the preferred response 6..9, every other at least 2 lower."""
    top = rng.randint(6, 9)
    return tuple(top if i == best else rng.randint(max(1, top - 5), top - 2) for i in range(n))


def judgment_text(draft: Draft, permutation: Sequence[int], scores: Sequence[int], rng: random.Random) -> str:
    """The assembled judgment for responses shown in ``permutation`` order (``scores`` in data order)."""
    weights = rng.choice(WEIGHTS[len(draft.principles)])
    principles = "\n".join(f"{i}. {p} ({w}%)" for i, (p, w) in enumerate(zip(draft.principles, weights), 1))
    analysis = "\n".join(f'Answer {pos}: "{draft.quotes[index]}" {draft.critiques[index]}'
                         for pos, index in enumerate(permutation, 1))
    boxed = ", ".join(str(scores[index]) for index in permutation)
    return f"Specific Criteria:\n{principles}\nAnalysis:\n{analysis}\nScores: \\boxed{{{boxed}}}"


def draft_from_json(data: dict) -> Draft:
    return Draft(tuple(data["principles"]), tuple(data["critiques"]), tuple(data["quotes"]),
                 data.get("reason", ""), int(data.get("tokens", 0)))

