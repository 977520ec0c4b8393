"""Reading a completion server's reply into ``Completion``s, trusting nothing in it.

A reply is a server's word about what it generated, and a server can be buggy, half
upgraded or not the model we think: choices that are not objects, token ids outside our
vocabulary, a text that is not a string. Every such fault raises ``MalformedReply``,
which the remote engine turns into ``EngineUnavailable`` naming the URL (UNAVAILABLE to
the caller), never a crash deep in the tokenizer.

Example::

    completions = read_completions(reply, n=4, tokenizer=tokenizer, eos_token_ids=[2])
"""

from __future__ import annotations

from typing import Any, Sequence

from grm.types import Completion


class MalformedReply(ValueError):
    """The reply does not hold what a completion server must send; the message says what."""


def read_completions(reply: Any, n: int, tokenizer: Any, eos_token_ids: Sequence[int]) -> list[Completion]:
    """The ``n`` completions of one ``/v1/completions`` reply, in choice order."""
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or len(choices) != n:
        got = len(choices) if isinstance(choices, list) else "no"
        raise MalformedReply(f"answered {got} choices where {n} were asked for")
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise MalformedReply(f"choices[{i}] is a {type(choice).__name__}, not an object: {str(choice)[:80]!r}")
        if not isinstance(choice.get("index", 0), int):
            raise MalformedReply(f"choices[{i}].index is not an integer: {choice.get('index')!r:.80}")
    vocabulary = len(tokenizer)
    return [_completion(c, tokenizer, vocabulary, eos_token_ids)
            for c in sorted(choices, key=lambda c: c.get("index", 0))]


def generated_ids(choice: dict) -> list[int] | None:
    """The generated token ids of one choice, where the server sends them (vLLM ``token_ids``,
    llama.cpp ``tokens``); None when it sends only text."""
    for name in ("token_ids", "tokens"):
        ids = choice.get(name)
        if isinstance(ids, list) and all(isinstance(i, int) for i in ids):
            return list(ids)
    return None


def _completion(choice: dict, tokenizer: Any, vocabulary: int, eos_token_ids: Sequence[int]) -> Completion:
    ids = generated_ids(choice)
    if ids is None:  # the server did not return ids: ours are the text, tokenized
        text = choice.get("text")
        if not isinstance(text, (str, type(None))):
            raise MalformedReply(f"a choice's text is a {type(text).__name__}, not a string")
        ids = tokenizer(text or "", add_special_tokens=False).input_ids
    else:
        outside = [i for i in ids if not 0 <= i < vocabulary]
        if outside:
            raise MalformedReply(f"a choice holds token ids outside the vocabulary of {vocabulary}: {outside[:5]}")
        text = None
    while ids and ids[-1] in eos_token_ids:  # ids exclude EOS, as the in-process engine's do
        ids = ids[:-1]
    if text is None:  # decode as the in-process engine does, so both give the same text
        text = tokenizer.decode(ids, skip_special_tokens=True)
    finished = choice.get("finish_reason") != "length"
    stop = choice.get("stop_reason")
    eos = stop if isinstance(stop, int) else eos_token_ids[0] if eos_token_ids else None
    return Completion(tuple(ids), text, finished, eos if finished else None)
