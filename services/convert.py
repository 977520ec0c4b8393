"""Conversions between the GRM's typed records (``grm.types``) and the ``grm.v1`` protos.

Both directions live here so the server and the client agree on one mapping: an
unscored response is ``scored=False`` with no reward on the wire and ``None`` in Python,
never a 0.

Example::

    msg = result_to_proto(result, from_cache=False, latency_ms=12.5)
    back = result_from_proto(msg)          # a grm.types.ScoreResult again
    assert back.rewards == result.rewards
"""

from __future__ import annotations

from grm.types import (Aggregation, AggregationOptions, InvalidReason, Judgment, SamplingOptions,
                       ScoreInput, ScoreResult, StrEnum)
from services.proto.grm.v1 import reward_pb2 as pb

# The gRPC service's full name, read from the proto so it cannot drift: the server registers
# its handlers and health status under it, the client asks for its health, and a channel
# to several replicas names it in its service config (services/targets.py).
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RewardService"].full_name  # "grm.v1.RewardService"


class CachePolicy(StrEnum):
    USE = "use"  # read the cache, store misses
    REFRESH = "refresh"  # skip the read, store the fresh result
    BYPASS = "bypass"  # neither read nor write, no sharing with identical in-flight calls


SAMPLING_FIELDS = ("k", "temperature", "top_p", "max_new_tokens", "seed", "shuffle", "adaptive", "adaptive_z",
                   "shared_principles")  # every grm.types.SamplingOptions field, all on the wire
CACHE_POLICY_TO_PROTO = {CachePolicy.USE: pb.CACHE_POLICY_USE, CachePolicy.REFRESH: pb.CACHE_POLICY_REFRESH,
                         CachePolicy.BYPASS: pb.CACHE_POLICY_BYPASS}
CACHE_POLICY_FROM_PROTO = {v: k for k, v in CACHE_POLICY_TO_PROTO.items()}
AGGREGATION_TO_PROTO = {Aggregation.VOTING: pb.AGGREGATION_METHOD_VOTING,
                        Aggregation.META_VOTING: pb.AGGREGATION_METHOD_META_VOTING}
AGGREGATION_FROM_PROTO = {pb.AGGREGATION_METHOD_UNSPECIFIED: Aggregation.VOTING,
                          pb.AGGREGATION_METHOD_VOTING: Aggregation.VOTING,
                          pb.AGGREGATION_METHOD_META_VOTING: Aggregation.META_VOTING}


def judgment_to_proto(j: Judgment) -> pb.Judgment:
    msg = pb.Judgment(principles=j.principles, critique=j.critique, scores=list(j.scores or ()),
                      permutation=list(j.permutation), valid=j.valid,
                      invalid_reason=str(j.reason) if j.reason is not None else "",
                      text=j.text, num_tokens=j.num_tokens)
    if j.meta_score is not None:
        msg.meta_score = j.meta_score
    msg.expected_scores.extend(j.expected_scores or ())
    return msg


def judgment_from_proto(msg: pb.Judgment) -> Judgment:
    reason: InvalidReason | str | None = None
    if not msg.valid:
        try:
            reason = InvalidReason(msg.invalid_reason)
        except ValueError:  # a reason added by a newer server: keep its name
            reason = msg.invalid_reason or None
    return Judgment(text=msg.text, principles=msg.principles, critique=msg.critique,
                    scores=tuple(msg.scores) if msg.valid else None, permutation=tuple(msg.permutation),
                    reason=reason, num_tokens=msg.num_tokens,
                    meta_score=msg.meta_score if msg.HasField("meta_score") else None,
                    expected_scores=tuple(msg.expected_scores) if msg.expected_scores else None)


def result_to_proto(result: ScoreResult, *, from_cache: bool = False, latency_ms: float = 0.0,
                    with_judgments: bool = True) -> pb.ScoreResult:
    """The wire form of a result; ``num_samples`` is ``len(result.judgments)`` (k)."""
    msg = pb.ScoreResult(num_samples=len(result.judgments), num_valid=result.num_valid,
                         num_used=result.num_used, aggregation=AGGREGATION_TO_PROTO[Aggregation(result.aggregation)],
                         from_cache=from_cache, prompt_tokens=result.prompt_tokens,
                         completion_tokens=result.completion_tokens, latency_ms=latency_ms,
                         stop_reason=result.stop_reason)
    expected = result.expected_rewards or (None,) * len(result.rewards)
    for reward, vote_sum, spread, mean in zip(result.rewards, result.vote_sums, result.spread, expected):
        score = msg.responses.add(scored=reward is not None, vote_sum=int(vote_sum))
        if reward is not None:
            score.reward = float(reward)
        if spread is not None:
            score.spread = float(spread)
        if mean is not None:
            score.expected_reward = float(mean)
    if result.best is not None:
        msg.best = result.best
    for reason, count in result.invalid_reasons.items():
        msg.invalid_reasons[str(reason)] = count
    if with_judgments:
        msg.judgments.extend(judgment_to_proto(j) for j in result.judgments)
    return msg


def result_from_proto(msg: pb.ScoreResult) -> ScoreResult:
    """A ``grm.types.ScoreResult``; its ``judgments`` are empty unless the server sent them."""
    return ScoreResult(
        rewards=tuple(s.reward if s.scored else None for s in msg.responses),
        vote_sums=tuple(s.vote_sum for s in msg.responses),
        spread=tuple(s.spread if s.scored and s.HasField("spread") else None for s in msg.responses),
        num_valid=msg.num_valid, num_used=msg.num_used,
        best=msg.best if msg.HasField("best") else None,
        judgments=tuple(judgment_from_proto(j) for j in msg.judgments),
        aggregation=AGGREGATION_FROM_PROTO.get(msg.aggregation, Aggregation.VOTING),
        prompt_tokens=msg.prompt_tokens, completion_tokens=msg.completion_tokens,
        invalid_reasons=dict(msg.invalid_reasons), stop_reason=msg.stop_reason,
        expected_rewards=tuple(s.expected_reward for s in msg.responses)
        if msg.responses and all(s.HasField("expected_reward") for s in msg.responses) else (),
    )


def input_to_proto(item: ScoreInput) -> pb.ScoreInput:
    msg = pb.ScoreInput(conversation=[pb.Message(role=m.role, content=m.content) for m in item.conversation],
                        responses=list(item.responses))
    if item.principles is not None:
        msg.principles = item.principles
    if item.reference is not None:
        msg.reference = item.reference
    return msg


def sampling_to_proto(sampling: SamplingOptions | None = None, **fields) -> pb.SamplingOptions:
    """All fields of ``sampling`` when given, else only the keyword fields that are not None.

    Unset fields take the server's defaults, so ``sampling_to_proto(k=4)`` asks for k=4
    and leaves temperature, max_new_tokens, ... to the server.
    """
    if sampling is not None:
        fields = {name: getattr(sampling, name) for name in
                  SAMPLING_FIELDS} | {
                      k: v for k, v in fields.items() if v is not None}
    return pb.SamplingOptions(**{k: v for k, v in fields.items() if v is not None})


def sampling_from_proto(msg: pb.SamplingOptions) -> SamplingOptions:
    """Only for messages with every field set (GetInfoResponse.default_sampling); the fields a
    server older than adaptive k does not send take their defaults."""
    later = {name: getattr(msg, name) for name in ("adaptive", "adaptive_z", "shared_principles")
             if msg.HasField(name)}
    return SamplingOptions(k=msg.k, temperature=msg.temperature, top_p=msg.top_p,
                           max_new_tokens=msg.max_new_tokens, seed=msg.seed, shuffle=msg.shuffle, **later)


def aggregation_to_proto(aggregation: AggregationOptions | str | None = None,
                         k_meta: int | None = None) -> pb.AggregationOptions:
    if isinstance(aggregation, AggregationOptions):
        aggregation, k_meta = aggregation.aggregation, aggregation.k_meta if k_meta is None else k_meta
    msg = pb.AggregationOptions()
    if aggregation is not None:
        msg.method = AGGREGATION_TO_PROTO[Aggregation(aggregation)]
    if k_meta is not None:
        msg.k_meta = k_meta
    return msg

