"""End-to-end: real servers on 127.0.0.1:0, real gRPC, a real tiny model.

The same tests run against the in-process server (``server`` fixture) and against a
``grm serve --port 0`` subprocess: Score, ScoreBatch, GetInfo, health, reflection.
"""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from grm.types import ScoreInput
from service_helpers import CONFIG, FAST, QUERY, RESPONSES
from services.client import AsyncRewardClient, ItemError, RetryPolicy, RewardClient, ScoreReply, batch_from_proto
from services.convert import input_to_proto
from services.proto.grm.v1 import reward_pb2 as pb
from services.proto.grm.v1 import reward_pb2_grpc as pb_grpc
from services.testing.serve_process import ServeProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def serve_process(tiny_model_path):
    proc = ServeProcess(tiny_model_path, "--metrics-port", "0", "--max-responses", "4")
    with RewardClient(proc.address) as c:
        c.wait_ready(timeout_s=120)
    yield proc
    assert proc.stop() == 0, proc.output()


@pytest.fixture(params=["in_process", "subprocess"])
def target(request) -> str:
    if request.param == "in_process":
        return request.getfixturevalue("server").address
    return request.getfixturevalue("serve_process").address


@pytest.fixture
def remote(target):
    with RewardClient(target, timeout_s=60, retry=RetryPolicy(max_attempts=1)) as c:
        yield c


def test_score_matches_the_in_process_judge(remote, local_judge):
    reply = remote.score(QUERY, RESPONSES, return_judgments=True, cache_policy="bypass", **FAST)
    expected = local_judge.score(QUERY, RESPONSES, **FAST)
    got = reply.result
    assert isinstance(reply, ScoreReply) and not reply.from_cache and reply.latency_ms > 0
    assert (got.rewards, got.vote_sums, got.spread, got.num_valid, got.num_used, got.best) == \
        (expected.rewards, expected.vote_sums, expected.spread, expected.num_valid, expected.num_used, expected.best)
    assert got.invalid_reasons == expected.invalid_reasons
    assert (got.prompt_tokens, got.completion_tokens) == (expected.prompt_tokens, expected.completion_tokens)
    assert [(j.text, j.permutation, j.reason, j.scores) for j in got.judgments] == \
        [(j.text, j.permutation, j.reason, j.scores) for j in expected.judgments]
    if not got.scored:  # a random model rarely writes a parseable judgment: unscored is None, never 0
        assert got.rewards == (None, None) and got.best is None


def test_score_without_judgments_strips_them(remote):
    reply = remote.score(QUERY, RESPONSES, cache_policy="bypass", **FAST)
    assert reply.result.judgments == () and len(reply.result.rewards) == 2


def test_cache_policies(remote):
    opts = dict(FAST, seed=4242)
    first = remote.score(QUERY, ["alpha", "beta"], **opts)
    hit = remote.score(QUERY, ["alpha", "beta"], **opts)
    assert not first.from_cache and hit.from_cache and hit.result == first.result
    full = remote.score(QUERY, ["alpha", "beta"], return_judgments=True, **opts)
    assert full.from_cache and len(full.result.judgments) == 2  # the cache holds the full result
    refresh = remote.score(QUERY, ["alpha", "beta"], cache_policy="refresh", **opts)
    bypass = remote.score(QUERY, ["alpha", "beta"], cache_policy="bypass", **opts)
    assert not refresh.from_cache and not bypass.from_cache
    assert refresh.result == bypass.result == first.result  # same seed, same result


def test_score_batch_keeps_order_and_isolates_a_bad_item(target, local_judge):
    good = [ScoreInput("What is 2+2?", ["4", "5"]), ScoreInput("Name a colour.", ["red", "seven", "blue"])]
    bad = pb.ScoreInput(conversation=[pb.Message(role="robot", content="hi")], responses=["x"])
    request = pb.ScoreBatchRequest(items=[input_to_proto(good[0]), bad, input_to_proto(good[1])],
                                   sampling=pb.SamplingOptions(k=2, max_new_tokens=16, seed=7),
                                   cache_policy=pb.CACHE_POLICY_BYPASS)
    with grpc.insecure_channel(target) as channel:
        outs = batch_from_proto(pb_grpc.RewardServiceStub(channel).ScoreBatch(request, timeout=60))
    assert [type(o) for o in outs] == [ScoreReply, ItemError, ScoreReply]
    assert outs[1].code == grpc.StatusCode.INVALID_ARGUMENT
    assert outs[1].message.startswith("items[1].conversation[0].role must be one of system, user, assistant")
    for item, out in zip(good, (outs[0], outs[2])):
        expected = local_judge.score(item.conversation, item.responses, k=2, max_new_tokens=16, seed=7)
        assert len(out.result.rewards) == len(item.responses)
        assert out.result.prompt_tokens == expected.prompt_tokens  # each result belongs to its own item


def test_get_info(remote, judge):
    info = remote.info()
    assert (info.model_id, info.revision, info.template_version) == (judge.model_id, judge.revision,
                                                                    judge.template.version)
    assert info.max_context == judge.max_context and info.meta_rm_id == ""
    assert info.limits["max_responses"] == 4 and info.limits["max_k"] >= 8
    assert (info.cache_backend, info.cache_state) == ("memory", "ok")
    assert info.default_sampling.k == 2 and info.default_sampling.max_new_tokens == 16


def test_health_serving(target):
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "grm.v1.RewardService"):
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_service(target):
    with grpc.insecure_channel(target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"grm.v1.RewardService", "grpc.health.v1.Health"} <= services
        service = DescriptorPool(db).FindServiceByName("grm.v1.RewardService")
        assert {m.name for m in service.methods} == {"Score", "ScoreBatch", "GetInfo"}
        assert service.FindMethodByName("ScoreBatch").output_type.full_name == "grm.v1.ScoreBatchResponse"


def test_async_client(target):
    async def main():
        async with AsyncRewardClient(target, timeout_s=60) as c:
            one = await c.score(QUERY, RESPONSES, cache_policy="bypass", **FAST)
            many = await c.score_batch([ScoreInput(QUERY, RESPONSES), ScoreInput("Say hi.", ["hi"])], **FAST)
            info = await c.info()
            return one, many, info

    one, many, info = asyncio.run(main())
    assert len(one.result.rewards) == 2 and [len(m.result.rewards) for m in many] == [2, 1]
    assert many[0].result.prompt_tokens == one.result.prompt_tokens
    assert info.template_version


def test_metrics_endpoint(server, client):
    client.score(QUERY, RESPONSES, cache_policy="bypass", **FAST)
    port = server.server.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for name in ("grm_requests_total", "grm_request_latency_seconds_bucket", "grm_samples_total",
                 "grm_invalid_samples_total", "grm_batch_size_bucket", "grm_queue_depth"):
        assert name in text, name
    assert server.metrics.value("grm_requests_total", method="Score", code="OK") >= 1
    assert CONFIG.metrics_port == 0 and port > 0


def test_subprocess_metrics_line(serve_process):
    url = serve_process.wait_for_line("metrics on ", 30).split()[-1]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert "grm_requests_total" in text


def test_receive_limit_is_raised_above_grpc_default(serve_process):
    """A 5 MiB request (gRPC's default limit is 4 MiB) reaches validation on a default server."""
    with RewardClient(serve_process.address, timeout_s=60, retry=RetryPolicy(max_attempts=1)) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.score(QUERY, ["x" * (5 << 20)], **FAST)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("input.responses[0] must be at most 200000 characters")
