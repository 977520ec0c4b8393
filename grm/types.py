"""Typed records shared across the GRM: inputs, sampling options, judgments, results.

Pure data, no torch and no I/O, so every layer (parsing, aggregation, the judge, the
service, the trainer) speaks the same names as the paper: ``k``, ``k_meta``,
``principles``, ``critique``, ``scores``, ``vote_sums``, ``rewards``.

The sampling rules live here and only here: ``SamplingOptions`` checks its fields on
construction, against a server's ``Limits`` when it is given them, and
``AggregationOptions.check`` the rules that join the options with each other and with the
judge. A broken rule raises ``ValidationError``, whose message names the field, the limit
and the value; the service answers it as INVALID_ARGUMENT without checking again.

Example::

    opts = SamplingOptions(k=4, seed=1)
    item = ScoreInput(conversation=[Message("user", "Name a prime.")],
                      responses=["7", "9"])
    SamplingOptions(k=64, limits=Limits(max_k=32))  # ValidationError: sampling.k must be in 1..32, got 64
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field
from enum import Enum

import grm.defaults as defaults

MIN_SCORE = 1
MAX_SCORE = 10
MAX_K = 256
MAX_TEMPERATURE = 10.0  # nobody needs more; bounds the logits / T arithmetic
MAX_SEED = 2**63 - 1
MAX_ADAPTIVE_Z = 100.0  # past this the confident rule never stops before "decided" does
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


Conversation = str | Sequence[Message | dict]  # a bare user turn, or chat messages (Message or {"role", "content"})


@dataclass(frozen=True)
class ScoreInput:
    """One thing to judge: a conversation whose last user turn is the query, plus N responses."""

    conversation: tuple[Message, ...]
    responses: tuple[str, ...]  # [N] candidate final assistant turns
    principles: str | None = None  # user-given criteria: the model then only critiques and scores
    reference: str | None = None  # optional reference answer shown to the judge

    def __init__(self, conversation: Conversation, responses: Sequence[str], principles: str | None = None,
                 reference: str | None = None):
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


class ValidationError(ValueError):
    """An option or request field broke a rule; ``str(error)`` names the field and the limit."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field} {message}")
        self.field = field


@dataclass(frozen=True)
class Limits:
    """What one request to a server may ask for. Every field must be >= 1."""

    max_responses: int = 16  # responses per input
    max_k: int = 32  # judgments per input
    max_new_tokens: int = 2048  # tokens per judgment
    max_batch_items: int = 512  # inputs per ScoreBatch call
    max_text_chars: int = 200_000  # characters per message, response, principles or reference
    max_messages: int = 64  # messages per conversation
    max_message_bytes: int = 64 * 2**20  # gRPC receive limit for one request

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{f.name} must be an integer >= 1, got {value!r}")
        if self.max_k > MAX_K:
            raise ValueError(f"Limits.max_k must be at most {MAX_K}, got {self.max_k}")

    def check_defaults(self, sampling: "SamplingOptions") -> None:
        """Raise when a server's default sampling options (what fills a request's unset
        fields) break these limits: every request would then be refused for them."""
        try:
            dataclasses.replace(sampling, limits=self)
        except ValidationError as e:
            raise ValueError(f"default {e}") from None


@dataclass(frozen=True)
class SamplingOptions:
    """How the k judgments are sampled. temperature 0 means greedy (then k is usually 1).

    Every field is checked on construction. ``limits`` (a server's ``Limits``; not stored)
    narrows ``k`` and ``max_new_tokens`` to what that server allows.
    """

    k: int = defaults.K  # judgments sampled per input
    temperature: float = defaults.TEMPERATURE  # 0 = greedy
    top_p: float = defaults.TOP_P  # nucleus sampling mass, (0, 1]
    max_new_tokens: int = defaults.MAX_NEW_TOKENS  # per judgment
    seed: int = 0  # same seed, same permutations and same samples
    shuffle: bool = True  # per-sample shuffle of the response order (against position bias)
    adaptive: str = "off"  # off | decided | confident: stop early (grm.adaptive); off draws all k
    adaptive_z: float = 2.0  # the confident rule's z (grm.adaptive.confident)
    shared_principles: bool = False  # inputs sharing a conversation continue from shared principles
    limits: InitVar[Limits | None] = None

    def __post_init__(self, limits: Limits | None) -> None:
        max_k = MAX_K if limits is None else limits.max_k
        if not 1 <= self.k <= max_k:
            raise ValidationError("sampling.k", f"must be in 1..{max_k}, got {self.k}")
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= MAX_TEMPERATURE):
            raise ValidationError("sampling.temperature",
                                  f"must be in [0, {MAX_TEMPERATURE:g}], got {self.temperature}")
        if not 0 < self.top_p <= 1:  # NaN fails this too
            raise ValidationError("sampling.top_p", f"must be in (0, 1], got {self.top_p}")
        if limits is None and self.max_new_tokens < 1:
            raise ValidationError("sampling.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        if limits is not None and not 1 <= self.max_new_tokens <= limits.max_new_tokens:
            raise ValidationError("sampling.max_new_tokens",
                                  f"must be in 1..{limits.max_new_tokens}, got {self.max_new_tokens}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValidationError("sampling.seed", f"must be in 0..{MAX_SEED}, got {self.seed}")
        if self.adaptive not in ADAPTIVE_MODES:
            raise ValidationError("sampling.adaptive",
                                  f"must be one of {', '.join(ADAPTIVE_MODES)}, got {self.adaptive!r}")
        if not (math.isfinite(self.adaptive_z) and 0 < self.adaptive_z <= MAX_ADAPTIVE_Z):
            raise ValidationError("sampling.adaptive_z", f"must be in (0, {MAX_ADAPTIVE_Z:g}], got {self.adaptive_z}")


@dataclass(frozen=True)
class AggregationOptions:
    aggregation: Aggregation = Aggregation.VOTING
    k_meta: int | None = None  # samples kept by meta voting; None -> grm.defaults.default_k_meta(k)

    def __post_init__(self) -> None:
        object.__setattr__(self, "aggregation", Aggregation(self.aggregation))
        if self.k_meta is not None and self.k_meta < 1:
            raise ValidationError("aggregation.k_meta", f"must be >= 1, got {self.k_meta}")

    def check(self, sampling: SamplingOptions, meta_rm: bool) -> None:
        """The rules that join these options with ``sampling`` and with the judge (``meta_rm``:
        whether it has a meta RM). Adaptive k stops on vote sums, while meta voting keeps
        the k_meta best-rated of all k samples, so the two do not mix."""
        if self.aggregation is Aggregation.META_VOTING and not meta_rm:
            raise ValidationError("aggregation.method", "META_VOTING needs a meta RM and this judge has none "
                                  "(a server names its meta RM in GetInfo.meta_rm_id; load one with meta_rm=...)")
        if self.k_meta is not None and not 1 <= self.k_meta <= sampling.k:
            raise ValidationError("aggregation.k_meta", f"must be in 1..k ({sampling.k}), got {self.k_meta}")
        if sampling.adaptive != "off" and self.aggregation is Aggregation.META_VOTING:
            raise ValidationError("sampling.adaptive", f"works with voting only, got {sampling.adaptive!r} "
                                  "with aggregation META_VOTING")


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
    # [N] per response, the mean score under the judge's next-token distribution over 1..9 where
    # it wrote that score (pointwise judges on engines that can read, ``grm.pointwise``); else None
    expected_scores: tuple[float, ...] | None = None

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
    best: int | None  # index of the best response (ties: expected_rewards, then seeded random); None = unscored
    judgments: tuple[Judgment, ...]  # [k] every sample, valid or not
    aggregation: Aggregation = Aggregation.VOTING
    prompt_tokens: int = 0  # prompt tokens sent: each distinct prompt once (per round under adaptive k)
    completion_tokens: int = 0  # generated tokens over the k samples
    invalid_reasons: dict[str, int] = field(default_factory=dict)  # reason -> count
    stop_reason: str = ""  # adaptive k: decided | confident | budget; "" when adaptive is off
    # [N] mean expected score over the used samples when every one carries expected_scores
    # (see Judgment); () otherwise. Tied vote sums are broken by these first.
    expected_rewards: tuple[float, ...] = ()

    @property
    def scored(self) -> bool:
        return self.num_used > 0
