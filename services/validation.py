"""Request validation: a ``grm.v1`` request proto in, typed ``grm.types`` records out.

Pure: no grpc, no model. Every rule names the field and the limit, so the server can
answer ``INVALID_ARGUMENT`` with ``str(error)`` as is, for example
``sampling.k must be in 1..32, got 0`` or ``items[3].responses must hold
1..16 responses, got 0``. Rules that need the model (does the rendered prompt fit the
context?) are checked later by the judge's ``plan``.

Example::

    limits = Limits(max_k=16)
    req = parse_score(request_proto, limits, defaults=SamplingOptions(k=4))
    req.items[0].responses, req.sampling.k, req.cache_policy
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from grm.types import ADAPTIVE_MODES, MAX_K, AggregationOptions, Message, SamplingOptions, ScoreInput
from services.convert import AGGREGATION_FROM_PROTO, CACHE_POLICY_FROM_PROTO, CachePolicy
from services.proto.grm.v1 import reward_pb2 as pb

ROLES = ("system", "user", "assistant")
MAX_TEMPERATURE = 10.0  # nobody needs more; bounds the logits / T arithmetic
MAX_SEED = 2**63 - 1
MAX_ADAPTIVE_Z = 100.0  # past this the confident rule never stops before "decided" does


class ValidationError(ValueError):
    """A request field broke a rule; ``str(error)`` names the field and the limit."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field} {message}")
        self.field = field


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Every field must be >= 1."""

    max_responses: int = 16  # responses per input
    max_k: int = 32  # judgments per input
    max_new_tokens: int = 2048  # tokens per judgment
    max_batch_items: int = 512  # inputs per ScoreBatch call
    max_text_chars: int = 200_000  # characters per message, response, principles or reference
    max_messages: int = 64  # messages per conversation
    max_message_bytes: int = 64 * 2**20  # gRPC receive limit for one request

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{f.name} must be an integer >= 1, got {value!r}")
        if self.max_k > MAX_K:
            raise ValueError(f"Limits.max_k must be at most {MAX_K}, got {self.max_k}")

    def check_defaults(self, defaults: SamplingOptions) -> None:
        """Raise when the server's default sampling options break these limits."""
        if defaults.k > self.max_k:
            raise ValueError(f"default k {defaults.k} exceeds Limits.max_k {self.max_k}")
        if defaults.max_new_tokens > self.max_new_tokens:
            raise ValueError(f"default max_new_tokens {defaults.max_new_tokens} exceeds "
                             f"Limits.max_new_tokens {self.max_new_tokens}")


@dataclass(frozen=True)
class Request:
    """A validated Score or ScoreBatch request. A Score request has exactly one item."""

    items: tuple[ScoreInput | ValidationError, ...]  # [items] a bad batch item keeps its error
    sampling: SamplingOptions
    aggregation: AggregationOptions
    cache_policy: CachePolicy
    return_judgments: bool


def parse_score(req: pb.ScoreRequest, limits: Limits, defaults: SamplingOptions = SamplingOptions(),
                meta_available: bool = False) -> Request:
    """Validate a ScoreRequest; any broken rule raises ValidationError."""
    if not req.HasField("input"):
        raise ValidationError("input", "is required")
    item = parse_input(req.input, limits, "input")
    sampling = parse_sampling(req.sampling, limits, defaults)
    aggregation = parse_aggregation(req.aggregation, sampling.k, meta_available)
    check_adaptive(sampling, aggregation)
    return Request((item,), sampling, aggregation, parse_cache_policy(req.cache_policy), req.return_judgments)


def parse_batch(req: pb.ScoreBatchRequest, limits: Limits, defaults: SamplingOptions = SamplingOptions(),
                meta_available: bool = False) -> Request:
    """Validate a ScoreBatchRequest. Shared options and the item count raise; a bad item
    is kept as its ValidationError so only that item fails."""
    if not 1 <= len(req.items) <= limits.max_batch_items:
        raise ValidationError("items", f"must hold 1..{limits.max_batch_items} inputs, got {len(req.items)}")
    sampling = parse_sampling(req.sampling, limits, defaults)
    aggregation = parse_aggregation(req.aggregation, sampling.k, meta_available)
    check_adaptive(sampling, aggregation)
    items = []
    for i, msg in enumerate(req.items):
        try:
            items.append(parse_input(msg, limits, f"items[{i}]"))
        except ValidationError as e:
            items.append(e)
    return Request(tuple(items), sampling, aggregation, parse_cache_policy(req.cache_policy),
                   req.return_judgments)


def parse_input(msg: pb.ScoreInput, limits: Limits, where: str) -> ScoreInput:
    conv = msg.conversation
    if not 1 <= len(conv) <= limits.max_messages:
        raise ValidationError(f"{where}.conversation", f"must hold 1..{limits.max_messages} messages, got {len(conv)}")
    for i, m in enumerate(conv):
        if m.role not in ROLES:
            raise ValidationError(f"{where}.conversation[{i}].role",
                                  f"must be one of {', '.join(ROLES)}, got {m.role!r}")
        if not m.content:
            raise ValidationError(f"{where}.conversation[{i}].content", "must not be empty")
        _check_text(m.content, f"{where}.conversation[{i}].content", limits)
    if conv[-1].role != "user":
        raise ValidationError(f"{where}.conversation[{len(conv) - 1}].role",
                              f"must be user (the conversation ends with the query), got {conv[-1].role!r}")
    if not 1 <= len(msg.responses) <= limits.max_responses:
        raise ValidationError(f"{where}.responses",
                              f"must hold 1..{limits.max_responses} responses, got {len(msg.responses)}")
    for i, response in enumerate(msg.responses):
        _check_text(response, f"{where}.responses[{i}]", limits)
    for name in ("principles", "reference"):
        if msg.HasField(name):
            _check_text(getattr(msg, name), f"{where}.{name}", limits)
    return ScoreInput([Message(m.role, m.content) for m in conv], list(msg.responses),
                      principles=msg.principles or None, reference=msg.reference or None)


def _check_text(text: str, field: str, limits: Limits) -> None:
    if len(text) > limits.max_text_chars:
        raise ValidationError(field, f"must be at most {limits.max_text_chars} characters, got {len(text)}")


def parse_sampling(msg: pb.SamplingOptions, limits: Limits, defaults: SamplingOptions) -> SamplingOptions:
    def get(name: str):
        return getattr(msg, name) if msg.HasField(name) else getattr(defaults, name)

    k, temperature, top_p = get("k"), get("temperature"), get("top_p")
    max_new_tokens, seed = get("max_new_tokens"), get("seed")
    if not 1 <= k <= limits.max_k:
        raise ValidationError("sampling.k", f"must be in 1..{limits.max_k}, got {k}")
    if not (math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
        raise ValidationError("sampling.temperature", f"must be in [0, {MAX_TEMPERATURE:g}], got {temperature}")
    if not 0 < top_p <= 1:  # NaN fails this too
        raise ValidationError("sampling.top_p", f"must be in (0, 1], got {top_p}")
    if not 1 <= max_new_tokens <= limits.max_new_tokens:
        raise ValidationError("sampling.max_new_tokens",
                              f"must be in 1..{limits.max_new_tokens}, got {max_new_tokens}")
    if not 0 <= seed <= MAX_SEED:
        raise ValidationError("sampling.seed", f"must be in 0..{MAX_SEED}, got {seed}")
    adaptive, adaptive_z = get("adaptive") or "off", get("adaptive_z")
    if adaptive not in ADAPTIVE_MODES:
        raise ValidationError("sampling.adaptive", f"must be one of {', '.join(ADAPTIVE_MODES)}, got {adaptive!r}")
    if not (math.isfinite(adaptive_z) and 0 < adaptive_z <= MAX_ADAPTIVE_Z):
        raise ValidationError("sampling.adaptive_z", f"must be in (0, {MAX_ADAPTIVE_Z:g}], got {adaptive_z}")
    return SamplingOptions(k=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                           seed=seed, shuffle=get("shuffle"), adaptive=adaptive, adaptive_z=adaptive_z,
                           shared_principles=get("shared_principles"))


def parse_aggregation(msg: pb.AggregationOptions, k: int, meta_available: bool) -> AggregationOptions:
    if msg.method not in AGGREGATION_FROM_PROTO:
        names = ", ".join(pb.AggregationMethod.keys())
        raise ValidationError("aggregation.method", f"must be one of {names}, got {msg.method}")
    method = AGGREGATION_FROM_PROTO[msg.method]
    if method == "meta_voting" and not meta_available:
        raise ValidationError("aggregation.method",
                              "META_VOTING needs a meta RM and this server has none (see GetInfo.meta_rm_id)")
    k_meta = msg.k_meta if msg.HasField("k_meta") else None
    if k_meta is not None and not 1 <= k_meta <= k:
        raise ValidationError("aggregation.k_meta", f"must be in 1..k ({k}), got {k_meta}")
    return AggregationOptions(method, k_meta)


def check_adaptive(sampling: SamplingOptions, aggregation: AggregationOptions) -> None:
    """Adaptive k stops on vote sums; meta voting keeps the k_meta best-rated of all k samples."""
    if sampling.adaptive != "off" and aggregation.aggregation == "meta_voting":
        raise ValidationError("sampling.adaptive", f"works with voting only, got {sampling.adaptive!r} "
                              "with aggregation META_VOTING")


def parse_cache_policy(value: int) -> CachePolicy:
    if value not in CACHE_POLICY_FROM_PROTO:
        names = ", ".join(pb.CachePolicy.keys())
        raise ValidationError("cache_policy", f"must be one of {names}, got {value}")
    return CACHE_POLICY_FROM_PROTO[value]
