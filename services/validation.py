"""Request validation: a ``grm.v1`` request proto in, typed ``grm.types`` records out.

Pure: no grpc, no model. Every rule names the field and the limit, so the server can
answer ``INVALID_ARGUMENT`` with ``str(error)`` as is, for example
``sampling.k must be in 1..32, got 0`` or ``items[3].responses must hold
1..16 responses, got 0``. The sampling and aggregation rules are the judge's own
(``SamplingOptions`` given the server's ``Limits``, ``AggregationOptions.check``); this
module checks the inputs and fills unset sampling fields with the server's defaults.
Rules that need the model (does the rendered prompt fit the context?) are checked later
by the judge's ``plan``.

Example::

    limits = Limits(max_k=16)
    req = parse_score(request_proto, limits, defaults=SamplingOptions(k=4))
    req.items[0].responses, req.sampling.k, req.cache_policy
"""

from __future__ import annotations

from dataclasses import dataclass

from grm.types import AggregationOptions, Limits, Message, SamplingOptions, ScoreInput, ValidationError
from services.convert import AGGREGATION_FROM_PROTO, CACHE_POLICY_FROM_PROTO, CachePolicy
from services.proto.grm.v1 import reward_pb2 as pb

ROLES = ("system", "user", "assistant")


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
    sampling, aggregation = parse_options(req, limits, defaults, meta_available)
    return Request((item,), sampling, aggregation, parse_cache_policy(req.cache_policy), req.return_judgments)


def parse_batch(req: pb.ScoreBatchRequest, limits: Limits, defaults: SamplingOptions = SamplingOptions(),
                meta_available: bool = False) -> Request:
    """Validate a ScoreBatchRequest. Shared options and the item count raise; a bad item
    is kept as its ValidationError so only that item fails."""
    if not 1 <= len(req.items) <= limits.max_batch_items:
        raise ValidationError("items", f"must hold 1..{limits.max_batch_items} inputs, got {len(req.items)}")
    sampling, aggregation = parse_options(req, limits, defaults, meta_available)
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


def parse_options(req: pb.ScoreRequest | pb.ScoreBatchRequest, limits: Limits, defaults: SamplingOptions,
                  meta_available: bool) -> tuple[SamplingOptions, AggregationOptions]:
    """The request's sampling options (unset fields from ``defaults``) and aggregation, checked
    by the judge's own rules against ``limits``."""
    msg = req.sampling

    def get(name: str):
        return getattr(msg, name) if msg.HasField(name) else getattr(defaults, name)

    sampling = SamplingOptions(k=get("k"), temperature=get("temperature"), top_p=get("top_p"),
                               max_new_tokens=get("max_new_tokens"), seed=get("seed"), shuffle=get("shuffle"),
                               adaptive=get("adaptive") or "off", adaptive_z=get("adaptive_z"),
                               shared_principles=get("shared_principles"), limits=limits)
    method = req.aggregation.method
    if method not in AGGREGATION_FROM_PROTO:
        names = ", ".join(pb.AggregationMethod.keys())
        raise ValidationError("aggregation.method", f"must be one of {names}, got {method}")
    k_meta = req.aggregation.k_meta if req.aggregation.HasField("k_meta") else None
    aggregation = AggregationOptions(AGGREGATION_FROM_PROTO[method], k_meta)
    aggregation.check(sampling, meta_rm=meta_available)
    return sampling, aggregation


def parse_cache_policy(value: int) -> CachePolicy:
    if value not in CACHE_POLICY_FROM_PROTO:
        names = ", ".join(pb.CachePolicy.keys())
        raise ValidationError("cache_policy", f"must be one of {names}, got {value}")
    return CACHE_POLICY_FROM_PROTO[value]
