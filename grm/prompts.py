"""Build the judge's prompt: per-sample response order, the rendered text, the token ids.

Three steps, one function each:

1. ``sample_permutations(n, k, seed)``: the order in which each of the k samples is
   shown the n responses (shuffled per sample against position bias, docs/design.md, "Judging and voting").
2. ``build_judge_content(template, item, permutation)``: the text of the one user
   message to the judge. Untrusted text (conversation, responses, principles,
   reference) is defanged first: copies of the template's fences and section headers
   get their brackets swapped, so ``[The End of Response 1]`` inside a response is
   shown as ``(The End of Response 1)`` and cannot close or open a fence.
3. ``encode_prompt(tokenizer, content)``: token ids through the chat template, with the
   content tokenized so that special-token strings (``<|im_end|>``, ``</s>``) in it stay
   plain text and cannot end the user turn and forge the judge's reply.

Example::

    item = ScoreInput("Name a prime.", ["7", "9"])
    perms = sample_permutations(2, k=4, seed=0)     # [(0, 1), (0, 1), (1, 0), (0, 1)]
    text = build_judge_content(DEFAULT_TEMPLATE, item, perms[2])  # shows 9 first
    # ... [The Begin of Response 1]\\n9\\n[The End of Response 1]\\n\\n[The Begin of Response 2]\\n7 ...
    ids = encode_prompt(tokenizer, text)
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Sequence

from grm.seeds import rng
from grm.templates import JudgeTemplate, fill
from grm.types import ScoreInput

# Swapping these characters keeps a defanged marker readable ("[X]" -> "(X)") while
# making it differ from the real one.
DEFANG = str.maketrans("[]<>{}#", "()()()=")
# Any single-line "### Title ###" header, beyond the template's own ones.
_ANY_HEADER = re.compile(r"#{3,}[^\n#]*#{3,}")
_SENTINEL = "GRMCONTENTSENTINEL7f3a9c1e"


def sample_permutations(n: int, k: int, seed: int, shuffle: bool = True) -> list[tuple[int, ...]]:
    """k orders of ``range(n)``; ``perm[j]`` is the original index shown at position j.

    Sample j shuffles with its own stream, ``grm.seeds.rng("grm-permutation", seed, j)``,
    so the first samples' orders do not depend on k (k=4 gives a prefix of k=8).
    """
    if n < 1 or k < 1:
        raise ValueError(f"n and k must be >= 1, got n={n}, k={k}")
    perms = []
    for j in range(k):
        order = list(range(n))
        if shuffle:
            rng("grm-permutation", seed, j).shuffle(order)
        perms.append(tuple(order))
    return perms


def one_response(item: ScoreInput, index: int) -> ScoreInput:
    """``item`` with response ``index`` alone: what a pointwise template shows per prompt."""
    return ScoreInput(item.conversation, (item.responses[index],), item.principles, item.reference)


def build_judge_content(template: JudgeTemplate, item: ScoreInput, permutation: Sequence[int]) -> str:
    """The full user message to the judge, responses shown in ``permutation`` order."""
    n = len(item.responses)
    if len(permutation) != n or sorted(permutation) != list(range(n)):
        raise ValueError(f"permutation must be a permutation of range({n}), got {tuple(permutation)}")
    clean = _defanger(template)
    if item.principles is not None:
        instruction = fill(template.instruction_with_principles, principles=clean(item.principles).strip(), n=n)
    else:
        criteria = "\n".join(f"{i}. {c}" for i, c in enumerate(template.seed_criteria, 1))
        instruction = fill(template.instruction, seed_criteria=criteria, n=n)
    turns = "\n\n".join(f"{template.role_labels[m.role]}: {clean(m.content)}" for m in item.conversation)
    parts = [instruction, f"{template.context_header}\n{keep_tail(turns, template.max_conversation_chars)}"]
    if item.reference is not None:
        parts.append(f"{template.reference_header}\n{clean(item.reference)}")
    fenced = [f"{fill(template.response_begin, i=pos)}\n{shown_response(template, item.responses[index])}\n"
              f"{fill(template.response_end, i=pos)}"
              for pos, index in enumerate(permutation, 1)]
    parts.append(template.responses_header + "\n" + "\n\n".join(fenced))
    boxed = "\\boxed{" + ", ".join(f"s{i}" for i in range(1, n + 1)) + "}"
    parts.append(fill(template.output_format, boxed_example=boxed, n=n))
    return "\n\n".join(parts).strip()


ELLIPSIS = "\u2026"


def keep_tail(text: str, cap: int | None) -> str:
    """The last ``cap`` characters of ``text`` or fewer, starting at a word, marked as cut."""
    if cap is None or len(text) <= cap:
        return text
    tail = text[len(text) - cap + 1:]
    cut = min((i for i in (tail.find(" "), tail.find("\n")) if i >= 0), default=-1)
    return ELLIPSIS + (tail[cut + 1:] if 0 <= cut < len(tail) // 2 else tail)


def keep_head(text: str, cap: int | None) -> str:
    """The first ``cap`` characters of ``text`` or fewer, ending at a word, marked as cut."""
    if cap is None or len(text) <= cap:
        return text
    head = text[:cap - 1]
    cut = max(head.rfind(" "), head.rfind("\n"))
    return (head[:cut] if cut > len(head) // 2 else head).rstrip() + ELLIPSIS


def shown_response(template: JudgeTemplate, text: str) -> str:
    """A response as the judge sees it: defanged, then cut to the template's cap."""
    return keep_head(_defanger(template)(text), template.max_response_chars)


def defang(template: JudgeTemplate, text: str) -> str:
    """``text`` with copies of the template's fences and of ``### ... ###`` headers defanged."""
    return _defanger(template)(text)


@lru_cache(maxsize=16)
def _defanger(template: JudgeTemplate):
    # Fences match loosely (any case, any spacing, any index, a missing closing bracket)
    # because a judge model would read such near-copies as fences too.
    fences = [_loose(f.split("{{i}}")[0]) + r"(?:[^\n]{0,16}?" + _loose(f.split("{{i}}")[-1]) + ")?"
              for f in (template.response_begin, template.response_end)]
    headers = [_loose(h) for h in (template.context_header, template.reference_header,
                                   template.responses_header)]
    pattern = re.compile("|".join([*fences, *headers, _ANY_HEADER.pattern]), re.IGNORECASE)
    return lambda text: pattern.sub(lambda m: m.group(0).translate(DEFANG), text)


def _loose(literal: str) -> str:
    """A regex for ``literal`` that allows any whitespace where it has some, or next to a bracket."""
    literal = literal.strip()
    if not literal:
        return ""
    out = []
    for ch in literal:
        if ch.isspace():
            if out and out[-1] != r"\s*":
                out.append(r"\s*")
        else:
            out.append(re.escape(ch))
            if ch in "[]<>{}#":
                out.append(r"\s*")
    return "".join(out).removesuffix(r"\s*")


def encode_prompt(tokenizer, content: str) -> list[int]:
    """Token ids of ``content`` as one user turn, ready for generation.

    The chat template is rendered around a sentinel and split there: its own text is
    tokenized normally (real special tokens), ``content`` with ``split_special_tokens``
    so a ``<|im_end|>`` inside a response stays plain text. Without a chat template the
    prompt is ``content + "\\n"``.
    """
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}],
                                                 tokenize=False, add_generation_prompt=True)
        if rendered.count(_SENTINEL) != 1:
            raise ValueError("the chat template must place the user message exactly once, "
                             f"found it {rendered.count(_SENTINEL)} times")
        prefix, suffix = rendered.split(_SENTINEL)
    else:
        prefix, suffix = "", "\n"
    ids = _tokens(tokenizer, prefix, split=False)
    ids += _piece(tokenizer, ids, prefix, content, split=True)
    ids += _piece(tokenizer, ids, prefix + content, suffix, split=False)
    bos = getattr(tokenizer, "bos_token_id", None)
    # The chat template usually writes BOS itself; add it only when it did not and the
    # tokenizer would have added it to a plain text.
    if bos is not None and ids[:1] != [bos] and _adds_bos(tokenizer, bos):
        ids = [bos] + ids
    return ids


def _piece(tokenizer, before_ids: list[int], before: str, text: str, split: bool) -> list[int]:
    """Ids of ``text`` where it follows ``before`` in the prompt.

    SentencePiece-style tokenizers prepend a space marker to the start of every call,
    which would put a space the model never sees in training between the template and
    the content. When the plain ids do not decode back in context, tokenize behind a
    newline anchor (which absorbs that marker) and drop the anchor's ids.
    """
    plain = _tokens(tokenizer, text, split)
    if not before_ids or not plain or tokenizer.decode(before_ids + plain) == before + text:
        return plain
    anchor = _tokens(tokenizer, "\n", split)
    anchored = _tokens(tokenizer, "\n" + text, split)
    rest = anchored[len(anchor):]
    if anchored[:len(anchor)] == anchor and tokenizer.decode(before_ids + rest) == before + text:
        return rest
    return plain


# A fast tokenizer applies ``split_special_tokens`` by changing a setting shared by every
# caller of that tokenizer object, so two threads encoding at once can see each other's
# setting and let a response's "<|im_end|>" become the real token. One lock closes that.
_ENCODE_LOCK = threading.Lock()


def _tokens(tokenizer, text: str, split: bool) -> list[int]:
    if not text:
        return []
    with _ENCODE_LOCK:
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=split)["input_ids"])


def _adds_bos(tokenizer, bos: int) -> bool:
    return tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
