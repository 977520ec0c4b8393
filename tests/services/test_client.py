"""The client: retries on UNAVAILABLE only (with backoff, within the deadline), a deadline on
every call, typed results; and against a real server that is still loading.

Retry behaviour is checked against a scripted stand-in for the service (a real gRPC server
on port 0 whose answers are listed per call), so every status code can be produced at will.
"""

from __future__ import annotations

import asyncio
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_helpers import CONFIG, FAST, QUERY, RESPONSES
from services.client import AsyncRewardClient, RetryPolicy, RewardClient
from services.proto.grm.v1 import reward_pb2 as pb
from services.server import BackgroundServer

Code = grpc.StatusCode
FAST_RETRY = RetryPolicy(max_attempts=5, initial_backoff_s=0.01, max_backoff_s=0.05)


class Scripted:
    """A RewardService whose n-th Score call answers ``script[n]`` (the last entry repeats)."""

    def __init__(self, script: list[Code | None], delay_s: float = 0.0):
        self.script, self.delay_s, self.calls = script, delay_s, 0
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        handler = grpc.unary_unary_rpc_method_handler(self.score, pb.ScoreRequest.FromString,
                                                      pb.ScoreResponse.SerializeToString)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "grm.v1.RewardService", {"Score": handler}),))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    def score(self, request, context):
        code = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        time.sleep(self.delay_s)
        if code is not None:
            context.abort(code, f"scripted {code.name}")
        return pb.ScoreResponse(result=pb.ScoreResult(
            responses=[pb.ResponseScore(scored=True, reward=7.5, vote_sum=15, spread=0.5),
                    pb.ResponseScore(scored=False, vote_sum=0)],
            num_samples=2, num_valid=2, num_used=2, best=0))

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop(None)


def test_retries_unavailable_then_returns_a_typed_result():
    with Scripted([Code.UNAVAILABLE, Code.UNAVAILABLE, None]) as svc, \
            RewardClient(svc.address, timeout_s=10, retry=FAST_RETRY) as client:
        reply = client.score(QUERY, RESPONSES)
    assert svc.calls == 3
    assert reply.result.rewards == (7.5, None)  # unscored stays None, never 0
    assert reply.result.vote_sums == (15, 0) and reply.result.best == 0 and not reply.from_cache


@pytest.mark.parametrize("code", [Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED, Code.INTERNAL,
                                  Code.DEADLINE_EXCEEDED, Code.FAILED_PRECONDITION])
def test_other_codes_are_not_retried(code):
    with Scripted([code]) as svc, RewardClient(svc.address, timeout_s=10, retry=FAST_RETRY) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.score(QUERY, RESPONSES)
    assert err.value.code() == code and svc.calls == 1


def test_gives_up_after_max_attempts():
    with Scripted([Code.UNAVAILABLE]) as svc, RewardClient(svc.address, timeout_s=10, retry=FAST_RETRY) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.score(QUERY, RESPONSES)
    assert err.value.code() == Code.UNAVAILABLE and svc.calls == FAST_RETRY.max_attempts


def test_every_call_has_a_deadline():
    with Scripted([None], delay_s=2.0) as svc, RewardClient(svc.address, timeout_s=0.3) as client:
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            client.score(QUERY, RESPONSES)
        assert err.value.code() == Code.DEADLINE_EXCEEDED and time.monotonic() - start < 1.5


def test_retries_stop_at_the_deadline():
    patient = RetryPolicy(max_attempts=1000, initial_backoff_s=0.05, max_backoff_s=0.1)
    with Scripted([Code.UNAVAILABLE]) as svc, RewardClient(svc.address, timeout_s=0.5, retry=patient) as client:
        start = time.monotonic()
        with pytest.raises(grpc.RpcError):
            client.score(QUERY, RESPONSES)
        assert time.monotonic() - start < 1.0 and 2 <= svc.calls < 1000


def test_async_client_retries_unavailable_only():
    async def call(address: str):
        async with AsyncRewardClient(address, timeout_s=10, retry=FAST_RETRY) as client:
            return await client.score(QUERY, RESPONSES)

    with Scripted([Code.UNAVAILABLE, None]) as svc:
        assert asyncio.run(call(svc.address)).result.rewards == (7.5, None) and svc.calls == 2
    with Scripted([Code.INVALID_ARGUMENT]) as svc:
        with pytest.raises(grpc.RpcError) as err:
            asyncio.run(call(svc.address))
        assert err.value.code() == Code.INVALID_ARGUMENT and svc.calls == 1


def test_retry_policy_backoff_grows_and_is_capped():
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.5, multiplier=2.0, jitter=0.2)
    for attempt, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        assert base * 0.8 - 1e-9 <= policy.backoff(attempt) <= base * 1.2 + 1e-9
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_a_loading_server_answers_unavailable_and_a_retrying_client_waits(judge):
    def slow_load():
        time.sleep(1.5)
        return judge

    bg = BackgroundServer(slow_load, config=CONFIG).start(wait_ready=False)
    try:
        with RewardClient(bg.address, timeout_s=10, retry=RetryPolicy(max_attempts=1)) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.score(QUERY, RESPONSES, **FAST)
            assert err.value.code() == Code.UNAVAILABLE and "loading" in err.value.details()
            health = health_pb2_grpc.HealthStub(client._channel)
            for service in ("", "grm.v1.RewardService"):
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        patient = RetryPolicy(max_attempts=30, initial_backoff_s=0.1, max_backoff_s=0.3)
        with RewardClient(bg.address, timeout_s=30, retry=patient) as client:
            assert len(client.score(QUERY, RESPONSES, **FAST).result.rewards) == 2
    finally:
        bg.stop()


def test_a_failed_load_is_reported(judge):
    def broken():
        raise OSError("no such checkpoint")

    bg = BackgroundServer(broken, config=CONFIG)
    with pytest.raises(RuntimeError, match="no such checkpoint"):
        bg.start()
    try:
        with RewardClient(bg.address, timeout_s=10, retry=RetryPolicy(max_attempts=1)) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.info()
            assert err.value.code() == Code.UNAVAILABLE and "failed to load" in err.value.details()
    finally:
        bg.stop()


def test_a_batch_past_the_servers_item_limit_is_split_and_keeps_its_order(server):
    """CONFIG allows 8 items per ScoreBatch; 11 items go as 8 + 3, results in input order."""
    from grm.types import ScoreInput

    items = [ScoreInput(f"{QUERY} ({i})", RESPONSES if i % 2 else RESPONSES[:1]) for i in range(11)]
    calls0 = server.metrics.value("grm_requests_total", method="ScoreBatch", code="OK")
    with RewardClient(server.address, timeout_s=60) as client:
        outs = client.score_batch(items, **FAST, cache_policy="bypass")
    assert [len(o.result.rewards) for o in outs] == [len(it.responses) for it in items]  # 1, 2, 1, 2, ...
    assert server.metrics.value("grm_requests_total", method="ScoreBatch", code="OK") - calls0 == 2

    async def main():
        async with AsyncRewardClient(server.address, timeout_s=60) as client:
            return await client.score_batch(items, **FAST, cache_policy="bypass")

    assert [len(o.result.rewards) for o in asyncio.run(main())] == [len(it.responses) for it in items]
    assert server.metrics.value("grm_requests_total", method="ScoreBatch", code="OK") - calls0 == 4
