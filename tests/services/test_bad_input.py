"""Malformed requests: each gets its documented status and a message naming the field and
the limit, and the server still serves a good request after every one of them.

Limits come from ``service_helpers.LIMITS`` (max_responses=4, max_k=8,
max_new_tokens=64, max_batch_items=8, max_text_chars=50_000, max_messages=8,
max_message_bytes=1 MiB). The tiny model's context is 4,096 tokens.
"""

from __future__ import annotations

import math

import grpc
import pytest

from service_helpers import FAST, QUERY, RESPONSES
from services.proto.grm.v1 import reward_pb2 as pb

INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED


def msg(role="user", content=QUERY):
    return pb.Message(role=role, content=content)


def score(conversation=None, responses=None, *, no_input=False, **fields) -> pb.ScoreRequest:
    """A ScoreRequest that is good except for what the arguments change."""
    sampling = pb.SamplingOptions(k=1, max_new_tokens=4)
    for name in ("k", "temperature", "top_p", "max_new_tokens", "seed"):
        if name in fields:
            setattr(sampling, name, fields.pop(name))
    request = pb.ScoreRequest(sampling=sampling, **fields)
    if not no_input:
        request.input.CopyFrom(pb.ScoreInput(conversation=[msg()] if conversation is None else conversation,
                                             responses=RESPONSES if responses is None else responses))
    return request


def batch(n: int, **sampling) -> pb.ScoreBatchRequest:
    item = pb.ScoreInput(conversation=[msg()], responses=RESPONSES)
    return pb.ScoreBatchRequest(items=[item] * n, sampling=pb.SamplingOptions(**sampling))


LONG = "0 1 2 3 4 5 6 7 8 9 " * 2400  # 48,000 characters: within max_text_chars, far beyond 4,096 tokens
# (name, method, request, code, the start of the message)
CASES = [
    ("no input", "Score", score(no_input=True), INVALID, "input is required"),
    ("empty conversation", "Score", score(conversation=[]), INVALID,
     "input.conversation must hold 1..8 messages, got 0"),
    ("too many messages", "Score", score(conversation=[msg()] * 9), INVALID,
     "input.conversation must hold 1..8 messages, got 9"),
    ("unknown role", "Score", score(conversation=[msg(role="robot")]), INVALID,
     "input.conversation[0].role must be one of system, user, assistant, got 'robot'"),
    ("empty message", "Score", score(conversation=[msg(content="")]), INVALID,
     "input.conversation[0].content must not be empty"),
    ("ends with assistant", "Score", score(conversation=[msg(), msg(role="assistant", content="hi")]), INVALID,
     "input.conversation[1].role must be user"),
    ("no responses", "Score", score(responses=[]), INVALID, "input.responses must hold 1..4 responses, got 0"),
    ("too many responses", "Score", score(responses=["a"] * 5), INVALID,
     "input.responses must hold 1..4 responses, got 5"),
    ("response too long", "Score", score(responses=["a", "b" * 50_001]), INVALID,
     "input.responses[1] must be at most 50000 characters, got 50001"),
    ("principles too long", "Score", score(), INVALID, "input.principles must be at most 50000 characters"),
    ("k zero", "Score", score(k=0), INVALID, "sampling.k must be in 1..8, got 0"),
    ("k negative", "Score", score(k=-3), INVALID, "sampling.k must be in 1..8, got -3"),
    ("k too large", "Score", score(k=9), INVALID, "sampling.k must be in 1..8, got 9"),
    ("negative temperature", "Score", score(temperature=-0.5), INVALID,
     "sampling.temperature must be in [0, 10], got -0.5"),
    ("NaN temperature", "Score", score(temperature=math.nan), INVALID,
     "sampling.temperature must be in [0, 10], got nan"),
    ("top_p zero", "Score", score(top_p=0.0), INVALID, "sampling.top_p must be in (0, 1], got 0.0"),
    ("top_p above one", "Score", score(top_p=1.5), INVALID, "sampling.top_p must be in (0, 1], got 1.5"),
    ("max_new_tokens zero", "Score", score(max_new_tokens=0), INVALID,
     "sampling.max_new_tokens must be in 1..64, got 0"),
    ("max_new_tokens too large", "Score", score(max_new_tokens=65), INVALID,
     "sampling.max_new_tokens must be in 1..64, got 65"),
    ("negative seed", "Score", score(seed=-1), INVALID, "sampling.seed must be in 0..9223372036854775807, got -1"),
    ("unknown aggregation", "Score", score(aggregation=pb.AggregationOptions(method=7)), INVALID,
     "aggregation.method must be one of AGGREGATION_METHOD_UNSPECIFIED"),
    ("meta voting without a meta RM", "Score",
     score(aggregation=pb.AggregationOptions(method=pb.AGGREGATION_METHOD_META_VOTING)), INVALID,
     "aggregation.method META_VOTING needs a meta RM"),
    ("k_meta above k", "Score", score(aggregation=pb.AggregationOptions(k_meta=2)), INVALID,
     "aggregation.k_meta must be in 1..k (1), got 2"),
    ("unknown cache policy", "Score", score(cache_policy=9), INVALID, "cache_policy must be one of CACHE_POLICY_USE"),
    ("input longer than the context", "Score", score(responses=[LONG]), INVALID,
     "input is too long for the model: the rendered prompt has"),
    ("bytes that are no protobuf", "Score", b"\xff\xff\xff", INVALID, "request is not a valid grm.v1.ScoreRequest"),
    ("string field with bad UTF-8", "Score", b"\x0a\x04\x12\x02\xff\xfe", INVALID,
     "request is not a valid grm.v1.ScoreRequest"),
    ("request above the receive limit", "Score", score(responses=["x" * (1 << 20)]), EXHAUSTED, ""),
    ("empty batch", "ScoreBatch", batch(0), INVALID, "items must hold 1..8 inputs, got 0"),
    ("batch too large", "ScoreBatch", batch(9), INVALID, "items must hold 1..8 inputs, got 9"),
    ("batch with bad shared k", "ScoreBatch", batch(2, k=0), INVALID, "sampling.k must be in 1..8, got 0"),
]
CASES[9][2].input.principles = "p" * 50_001  # proto3 optional fields are set after construction


@pytest.fixture(scope="module")
def raw(server):
    """Call the methods with raw bytes, so the table can also send what no client would build."""
    channel = grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 8 << 20)])
    calls = {name: channel.unary_unary(f"/grm.v1.RewardService/{name}", request_serializer=None,
                                       response_deserializer=None) for name in ("Score", "ScoreBatch")}
    yield calls
    channel.close()


@pytest.mark.parametrize("name,method,request_,code,message", CASES, ids=[c[0] for c in CASES])
def test_bad_request_is_answered_and_the_server_keeps_serving(raw, client, name, method, request_, code, message):
    data = request_ if isinstance(request_, bytes) else request_.SerializeToString()
    with pytest.raises(grpc.RpcError) as err:
        raw[method](data, timeout=30)
    assert err.value.code() == code, err.value.details()
    assert err.value.details().startswith(message), err.value.details()
    reply = client.score(QUERY, RESPONSES, cache_policy="bypass", **dict(FAST, k=1, max_new_tokens=4))
    assert len(reply.result.rewards) == 2


def test_table_is_large_enough():
    assert len(CASES) >= 15


def test_no_bad_input_ever_counted_as_internal(server):
    for code in ("INTERNAL", "UNKNOWN"):
        for method in ("Score", "ScoreBatch", "GetInfo"):
            assert server.metrics.value("grm_requests_total", method=method, code=code) == 0
