"""The generation engine interface: what the judge needs from a language model.

An engine turns token-id prompts into sampled continuations. Each request asks for
``n`` samples from one prompt; an engine is expected to prefill that prompt once and
sample the ``n`` continuations from the shared prefix (docs/design.md, "Engines and batching"). Requests
in one call may differ in length and sampling options, so a scheduler can merge work
from many callers into one engine pass.

Sample ``i`` of a request draws from its own random stream seeded by ``(seed, i)``, so
a request's output does not depend on what else shares its batch.

A caller with a deadline runs ``generate`` inside ``pass_deadline(fn)``; an engine that
waits on something outside its process (a remote server) reads ``current_deadline()`` and
gives up with ``EngineTimeout`` once it passes. An in-process engine may ignore it.

An engine may also read instead of sample: ``next_token_logprobs(sequences, token_ids)``
returns, per token-id sequence, the log-probabilities of ``token_ids`` as its next token. It
is optional (``TransformersEngine`` has it, ``RemoteEngine`` does not); a pointwise judge uses
it when present to read its expected scores (``grm.pointwise.read_expected``).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import grm.defaults as defaults
from grm.types import Completion


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]  # [L] the rendered prompt, special tokens included
    n: int = 1  # samples drawn from this prompt
    temperature: float = defaults.TEMPERATURE  # 0 = greedy
    top_p: float = defaults.TOP_P
    max_new_tokens: int = defaults.MAX_NEW_TOKENS
    seed: int = 0
    # Asked between decoding steps: False means nobody waits for this request any more (its
    # callers left or their deadlines passed), so an engine may stop it and return what it
    # has, marked unfinished. None: always wanted.
    wanted: Callable[[], bool] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("prompt_ids must not be empty")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


class GenerationEngine(Protocol):
    """Anything that samples continuations for token-id prompts."""

    model_id: str  # a name for the weights, shown to users
    revision: str  # a hash of the weights, for cache keys
    tokenizer: Any  # a Hugging Face tokenizer (used to render and decode prompts)
    max_context: int  # prompt + generated tokens the model accepts

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """Return ``[len(requests)][request.n]`` completions, in request order."""
        ...


class EngineFailure(RuntimeError):
    """The engine as a whole failed a call (not one input): rerunning the inputs one by one
    cannot help, and no score comes out of it. ``url`` names the engine that failed."""

    def __init__(self, message: str, url: str = ""):
        super().__init__(message)
        self.url = url


class EngineUnavailable(EngineFailure):
    """The engine is down, unreachable or answered garbage (gRPC UNAVAILABLE)."""


class EngineOverloaded(EngineFailure):
    """The engine refused the work as too much right now (gRPC RESOURCE_EXHAUSTED)."""


class EngineTimeout(EngineFailure):
    """The caller's deadline passed while the engine was still working (gRPC DEADLINE_EXCEEDED)."""


_PASS = threading.local()


@contextmanager
def pass_deadline(deadline_at: Callable[[], float | None]) -> Iterator[None]:
    """Within this block, ``current_deadline()`` on this thread returns ``deadline_at()``: the
    ``time.monotonic()`` second the engine call must end by (None: no limit). A function, not
    a number, because a deadline may move later while the call runs (shared work)."""
    previous = getattr(_PASS, "deadline_at", None)
    _PASS.deadline_at = deadline_at
    try:
        yield
    finally:
        _PASS.deadline_at = previous


def current_deadline() -> float | None:
    """The deadline of the engine call running on this thread (see ``pass_deadline``)."""
    fn = getattr(_PASS, "deadline_at", None)
    return fn() if fn is not None else None
