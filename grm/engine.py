"""The generation engine interface: what the judge needs from a language model.

An engine turns token-id prompts into sampled continuations. Each request asks for
``n`` samples from one prompt; an engine is expected to prefill that prompt once and
sample the ``n`` continuations from the shared prefix (docs/design.md, "Engines and batching"). Requests
in one call may differ in length and sampling options, so a scheduler can merge work
from many callers into one engine pass.

Sample ``i`` of a request draws from its own random stream seeded by ``(seed, i)``, so
a request's output does not depend on what else shares its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from grm.types import Completion


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]  # [L] the rendered prompt, special tokens included
    n: int = 1  # samples drawn from this prompt
    temperature: float = 0.5  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0

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
