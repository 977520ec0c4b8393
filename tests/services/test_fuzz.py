"""Fuzzing: property tests of validation, parsing, aggregation and the cache envelope, and a
fuzz run of the live servicer with mutated valid requests and random bytes.

What must hold for any input: validation either returns a request within the limits or
raises ``ValidationError`` naming a field; parsing never raises and a valid parse holds
exactly n scores in 1..10; aggregation's vote sums are the sums of the valid samples'
scores and a response without a valid sample is unscored (None, never 0); a stored result
reads back as itself and a corrupted entry reads as a miss. The live server answers every
one of 10,000 hostile calls with a deliberate status (never INTERNAL or UNKNOWN) and still
serves a good request afterwards.
"""

from __future__ import annotations

import math
import random

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grm.aggregation import aggregate
from grm.parsing import parse_judgment
from grm.types import Aggregation, Judgment
from service_helpers import LIMITS, QUERY, RESPONSES
from services.convert import result_to_proto
from services.proto.grm.v1 import reward_pb2 as pb
from services.result_store import read_result, result_entries
from services.validation import Request, ValidationError, parse_batch, parse_score

PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Text as hostile clients write it: fences, boxes, headers, special-token strings, controls.
PIECES = ["\\boxed{", "}", "7", "10", "0", "-3", ", ", "Scores:", "Analysis:", "Specific Criteria:",
          "[The Begin of Response 1]", "<|im_end|>", "</s>", "\n", " ", "\x00", "\u202e", "é", "日"]
hostile_text = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=8)), max_size=40).map("".join)


@PROPERTY
@given(text=hostile_text, n=st.integers(1, 16), finished=st.booleans())
def test_parsing_never_raises_and_valid_means_n_scores_in_range(text, n, finished):
    parsed = parse_judgment(text, n, finished=finished)
    assert (parsed.scores is None) != (parsed.reason is None)
    if parsed.scores is not None:
        assert len(parsed.scores) == n and all(1 <= s <= 10 for s in parsed.scores)


def _judgments(n: int):
    scores = st.one_of(st.none(), st.tuples(*[st.integers(1, 10)] * n))
    meta = st.floats(-5, 5, allow_nan=False)
    return st.lists(st.builds(lambda s, m: Judgment(text="t", principles="", critique="", scores=s,
                                                    permutation=tuple(range(n)),
                                                    reason=None if s is not None else "no_scores",
                                                    num_tokens=1, meta_score=m), scores, meta),
                    min_size=1, max_size=12)


@PROPERTY
@given(data=st.data(), n=st.integers(1, 6), meta=st.booleans(), seed=st.integers(0, 2**63 - 1))
def test_aggregation_sums_valid_samples_and_never_invents_a_zero(data, n, meta, seed):
    judgments = data.draw(_judgments(n))
    result = aggregate(judgments, n, Aggregation.META_VOTING if meta else Aggregation.VOTING, seed=seed)
    valid = [j for j in judgments if j.valid]
    assert result.num_valid == len(valid) and result.num_used <= len(valid)
    if not valid:
        assert result.rewards == (None,) * n and result.best is None and result.vote_sums == (0,) * n
        return
    used = valid if not meta else None
    if used is not None:
        assert result.vote_sums == tuple(sum(j.scores[i] for j in used) for i in range(n))
    assert all(1 <= r <= 10 for r in result.rewards)
    assert result.vote_sums[result.best] == max(result.vote_sums)
    assert sum(result.invalid_reasons.values()) == len(judgments) - len(valid)


_options = st.fixed_dictionaries({}, optional={
    "k": st.integers(-5, 40), "temperature": st.floats(allow_nan=True, allow_infinity=True, width=32),
    "top_p": st.floats(allow_nan=True, allow_infinity=True, width=32), "max_new_tokens": st.integers(-5, 5000),
    "seed": st.integers(-(2**63), 2**63 - 1)})
_message = st.builds(pb.Message, role=st.sampled_from(["user", "assistant", "system", "robot", "", "USER"]),
                     content=hostile_text)
_input = st.builds(lambda conv, responses, principles: pb.ScoreInput(conversation=conv, responses=responses,
                                                                      principles=principles),
                   st.lists(_message, max_size=10), st.lists(hostile_text, max_size=6), hostile_text)


@PROPERTY
@given(item=_input, options=_options, aggregation=st.integers(0, 5), k_meta=st.integers(-2, 40), meta=st.booleans(),
       cache_policy=st.integers(0, 6), batch=st.booleans())
def test_validation_accepts_within_limits_or_names_a_field(item, options, aggregation, k_meta, meta, cache_policy,
                                                            batch):
    sampling = pb.SamplingOptions(**options)
    agg = pb.AggregationOptions(method=aggregation, k_meta=k_meta)
    try:
        if batch:
            req = parse_batch(pb.ScoreBatchRequest(items=[item, item], sampling=sampling, aggregation=agg,
                                                   cache_policy=cache_policy), LIMITS, meta_available=meta)
        else:
            req = parse_score(pb.ScoreRequest(input=item, sampling=sampling, aggregation=agg,
                                              cache_policy=cache_policy), LIMITS, meta_available=meta)
    except ValidationError as e:
        assert e.field and str(e).startswith(e.field)
        return
    assert isinstance(req, Request)
    assert 1 <= req.sampling.k <= LIMITS.max_k and 1 <= req.sampling.max_new_tokens <= LIMITS.max_new_tokens
    assert math.isfinite(req.sampling.temperature) and req.sampling.temperature >= 0
    for parsed in req.items:
        if isinstance(parsed, ValidationError):
            continue
        assert 1 <= len(parsed.responses) <= LIMITS.max_responses


@PROPERTY
@given(data=st.data(), n=st.integers(1, 4), junk=st.binary(max_size=200))
def test_the_cache_envelope_round_trips_and_corruption_is_a_miss(data, n, junk):
    judgments = data.draw(_judgments(n))
    msg = result_to_proto(aggregate(judgments, n))
    blobs = dict(result_entries("k", msg))
    back = read_result("k", blobs, with_judgments=True)
    msg.from_cache = True
    assert back == msg
    assert len(read_result("k", blobs, with_judgments=False).judgments) == 0
    corrupted = read_result("k", {"k": junk, "k:judgments": junk}, with_judgments=True)
    assert corrupted is None or isinstance(corrupted, pb.ScoreResult)


# ---------------------------------------------------------------- the live servicer

METHODS = {"/grm.v1.RewardService/Score": pb.ScoreRequest, "/grm.v1.RewardService/ScoreBatch": pb.ScoreBatchRequest,
           "/grm.v1.RewardService/GetInfo": pb.GetInfoRequest}
DELIBERATE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
              grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE}
FUZZ_CASES = 10_000


def _seeds() -> list[tuple[str, bytes]]:
    conversation = [pb.Message(role="user", content=QUERY)]
    cheap = pb.SamplingOptions(k=1, max_new_tokens=2)
    score = pb.ScoreRequest(input=pb.ScoreInput(conversation=conversation, responses=RESPONSES), sampling=cheap,
                            return_judgments=True)
    batch = pb.ScoreBatchRequest(items=[score.input] * 2, sampling=cheap)
    return [("/grm.v1.RewardService/Score", score.SerializeToString()),
            ("/grm.v1.RewardService/ScoreBatch", batch.SerializeToString()),
            ("/grm.v1.RewardService/GetInfo", pb.GetInfoRequest().SerializeToString())]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of: random bytes, flipped bits, a truncation, inserted or duplicated bytes."""
    kind = rng.randrange(5)
    if kind == 0 or not data:
        return rng.randbytes(rng.randrange(0, 300))
    out = bytearray(data)
    if kind == 1:
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind == 2:
        del out[rng.randrange(len(out)):]
    elif kind == 3:
        at = rng.randrange(len(out) + 1)
        out[at:at] = rng.randbytes(rng.randint(1, 16))
    else:
        at, size = rng.randrange(len(out)), rng.randint(1, 32)
        out[at:at] = out[at:at + size] * rng.randint(2, 6)
    return bytes(out)


@pytest.mark.slow
def test_ten_thousand_hostile_calls_get_deliberate_statuses(server):
    """Raw bytes go through the channel unserialized, so the server's own decoding is fuzzed."""
    rng = random.Random(0)
    seeds = _seeds()
    channel = grpc.insecure_channel(server.address)
    calls = {name: channel.unary_unary(name) for name in METHODS}
    codes: dict[grpc.StatusCode, int] = {}
    try:
        for start in range(0, FUZZ_CASES, 100):
            futures = []
            for _ in range(100):
                name, data = rng.choice(seeds)
                futures.append(calls[name].future(mutate(data, rng), timeout=60))
            for future in futures:
                try:
                    future.result()
                    code = grpc.StatusCode.OK
                except grpc.RpcError as e:
                    code = e.code()
                    assert code in DELIBERATE, f"{code.name}: {e.details()}"
                codes[code] = codes.get(code, 0) + 1
        good = pb.ScoreResponse.FromString(calls["/grm.v1.RewardService/Score"](seeds[0][1], timeout=60))
        assert len(good.result.responses) == 2
    finally:
        channel.close()
    print({c.name: n for c, n in codes.items()})
    assert sum(codes.values()) == FUZZ_CASES
    assert codes.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 1000 and codes.get(grpc.StatusCode.OK, 0) > 100, codes
