"""Typed records shared across the GRM: inputs, sampling options, judgments, results.

Pure data, no torch and no I/O, so every layer (parsing, aggregation, the judge, the
service, the trainer) speaks the same names as the paper: ``k``, ``k_meta``,
``principles``, ``critique``, ``scores``, ``vote_sums``, ``rewards``.

Example::

    opts = SamplingOptions(k=8, temperature=0.5)
    item = ScoreInput(conversation=[Message("user", "Name a prime.")],
                      responses=["7", "9"])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
MIN_SCORE = 1
MAX_SCORE = 10
MAX_K = 256
ADAPTIVE_MODES = ("off", "decided", "confident")  # grm.adaptive.Adaptive


class StrEnum(str, Enum):
    """``enum.StrEnum`` for Python 3.10."""

    def __str__(self) -> str:
        return self.value


class InvalidReason(StrEnum):
    """Why a sampled judgment could not be used. Invalid samples are counted, never scored 0."""

    NO_SCORES = "no_scores"  # no \\boxed{...} in the generated text
    WRONG_COUNT = "wrong_count"  # the last \\boxed{} holds a number of items != N
    NOT_INTEGER = "not_integer"  # an item is not a plain integer
    OUT_OF_RANGE = "out_of_range"  # an integer outside 1..10
    TRUNCATED = "truncated"  # hit max_new_tokens before EOS and no complete \\boxed{}
    EMPTY = "empty"  # nothing generated


class Aggregation(StrEnum):
    VOTING = "voting"  # S*_i = sum over valid samples of S_ij
    META_VOTING = "meta_voting"  # only the k_meta samples the meta RM rates highest


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str

    def __post_init__(self) -> None:
        if self.role not in ("system", "user", "assistant"):
            raise ValueError(f"Message.role must be system, user or assistant, got {self.role!r}")


@dataclass(frozen=True)
class ScoreInput:
    """One thing to judge: a conversation whose last user turn is the query, plus N responses."""

    conversation: tuple[Message, ...]
    responses: tuple[str, ...]  # [N] candidate final assistant turns
    principles: str | None = None  # user-given criteria: the model then only critiques and scores
    reference: str | None = None  # optional reference answer shown to the judge

    def __init__(self, conversation, responses, principles=None, reference=None):
        if isinstance(conversation, str):
            conversation = (Message("user", conversation),)
        conv = tuple(m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in conversation)
        object.__setattr__(self, "conversation", conv)
        object.__setattr__(self, "responses", tuple(responses))
        object.__setattr__(self, "principles", principles or None)
        object.__setattr__(self, "reference", reference or None)
        if not conv:
            raise ValueError("conversation must hold at least one message")
        if not self.responses:
            raise ValueError("responses must hold at least one response")

    @property
    def query(self) -> str:
        """The last user turn."""
        for m in reversed(self.conversation):
            if m.role == "user":
                return m.content
        return self.conversation[-1].content


@dataclass(frozen=True)
class SamplingOptions:
    """How the k judgments are sampled. temperature 0 means greedy (then k is usually 1)."""

    k: int = 8  # judgments sampled per input
    temperature: float = 0.5  # paper: 0.5 for inference-time scaling
    top_p: float = 1.0  # nucleus sampling mass, (0, 1]
    max_new_tokens: int = 512  # per judgment
    seed: int = 0  # same seed, same permutations and same samples
    shuffle: bool = True  # per-sample shuffle of the response order (against position bias)
    adaptive: str = "off"  # off | decided | confident: stop early (grm.adaptive); off draws all k
    adaptive_z: float = 2.0  # the confident rule's z (grm.adaptive.confident)
    shared_principles: bool = False  # inputs sharing a conversation continue from shared principles

    def __post_init__(self) -> None:
        if self.adaptive not in ADAPTIVE_MODES:
            raise ValueError(f"adaptive must be one of {', '.join(ADAPTIVE_MODES)}, got {self.adaptive!r}")
        if not (math.isfinite(self.adaptive_z) and self.adaptive_z > 0):
            raise ValueError(f"adaptive_z must be a finite number > 0, got {self.adaptive_z}")
        if not 1 <= self.k <= MAX_K:
            raise ValueError(f"k must be in 1..{MAX_K}, got {self.k}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in 0..2^63-1, got {self.seed}")


@dataclass(frozen=True)
class AggregationOptions:
    aggregation: Aggregation = Aggregation.VOTING
    k_meta: int | None = None  # samples kept by meta voting; None -> max(1, k // 2)

    def __post_init__(self) -> None:
        object.__setattr__(self, "aggregation", Aggregation(self.aggregation))
        if self.k_meta is not None and self.k_meta < 1:
            raise ValueError(f"k_meta must be >= 1, got {self.k_meta}")


@dataclass(frozen=True)
class Completion:
    """One sampled continuation from a generation engine."""

    token_ids: tuple[int, ...]  # generated ids, EOS excluded
    text: str
    finished: bool  # True when the model emitted EOS; False when max_new_tokens cut it
    eos_token_id: int | None = None  # the EOS id that ended it (a model may have several); None when cut


@dataclass(frozen=True)
class Judgment:
    """One sampled judgment, parsed. ``scores`` are in the ORIGINAL response order."""

    text: str  # the model's generated text, verbatim
    principles: str  # the "Specific Criteria" part ("" when absent)
    critique: str  # the "Analysis" part ("" when absent)
    scores: tuple[int, ...] | None  # [N] 1..10, original order; None when invalid
    permutation: tuple[int, ...]  # [N] permutation[j] = original index shown at position j+1
    reason: InvalidReason | None = None  # None when valid
    num_tokens: int = 0  # generated tokens
    meta_score: float | None = None  # meta RM's estimate that this judgment is correct

    @property
    def valid(self) -> bool:
        return self.scores is not None


@dataclass(frozen=True)
class ScoreResult:
    """The aggregated reward for one ScoreInput."""

    rewards: tuple[float | None, ...]  # [N] mean score over used samples (1..10); None = unscored
    vote_sums: tuple[int, ...]  # [N] S*_i, sum of scores over used samples
    spread: tuple[float | None, ...]  # [N] population std of scores over used samples
    num_valid: int  # valid samples among the k
    num_used: int  # samples summed (num_valid, or at most k_meta under meta voting)
    best: int | None  # index of the best response (seeded random tie-break); None when unscored
    judgments: tuple[Judgment, ...]  # [k] every sample, valid or not
    aggregation: Aggregation = Aggregation.VOTING
    prompt_tokens: int = 0  # prompt tokens sent: each distinct prompt once (per round under adaptive k)
    completion_tokens: int = 0  # generated tokens over the k samples
    invalid_reasons: dict[str, int] = field(default_factory=dict)  # reason -> count
    stop_reason: str = ""  # adaptive k: decided | confident | budget; "" when adaptive is off

    @property
    def scored(self) -> bool:
        return self.num_used > 0
