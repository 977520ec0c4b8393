"""The client: retries on UNAVAILABLE only (with backoff, within the deadline unless the
policy grants waiting time), a deadline on every call, typed results; against a real server
that is still loading; and ``score_rows``, large groups included.

Retry behaviour is checked against a scripted stand-in for the service (a real gRPC server
on port 0 whose answers are listed per call), so every status code can be produced at will;
``score_rows``' parts against a stand-in that records the ScoreBatch items it was sent.
"""

from __future__ import annotations

import asyncio
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_helpers import CONFIG, FAST, QUERY, RESPONSES
from grm.grouping import Row
from grm.types import ScoreInput
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


def test_waiting_time_granted_by_the_policy_is_not_charged_to_the_deadline():
    """Six UNAVAILABLE answers take longer to wait out than the 0.2 s deadline: without
    max_wait_s the call gives up, with it the call waits and succeeds."""
    quick = dict(max_attempts=None, initial_backoff_s=0.05, max_backoff_s=0.1)
    script = [Code.UNAVAILABLE] * 6 + [None]
    with Scripted(script) as svc, RewardClient(svc.address, timeout_s=0.2, retry=RetryPolicy(**quick)) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.score(QUERY, RESPONSES)
        assert err.value.code() == Code.UNAVAILABLE and svc.calls < len(script)
    patient = RetryPolicy(**quick, max_wait_s=5.0)
    with Scripted(script) as svc, RewardClient(svc.address, timeout_s=0.2, retry=patient) as client:
        assert client.score(QUERY, RESPONSES).result.rewards == (7.5, None) and svc.calls == len(script)


def test_the_policy_retries_the_codes_it_names():
    busy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02,
                       codes=frozenset({Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED}))
    with Scripted([Code.RESOURCE_EXHAUSTED, None]) as svc, RewardClient(svc.address, timeout_s=5, retry=busy) as c:
        assert c.score(QUERY, RESPONSES).result.rewards == (7.5, None) and svc.calls == 2
    with pytest.raises(ValueError, match="max_wait_s"):
        RetryPolicy(max_wait_s=-1)
    with pytest.raises(ValueError, match="codes"):
        RetryPolicy(codes=frozenset({14}))


class Recording:
    """A RewardService with Limits(max_responses=4, max_batch_items=8) that records every
    ScoreBatch item and scores response "v" as v + 2 * (its item's index in the call): each
    item is judged 2 points harsher or milder than the last, as a real judge may be."""

    def __init__(self):
        self.items: list[pb.ScoreInput] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        handlers = {"GetInfo": grpc.unary_unary_rpc_method_handler(
                        self.info, pb.GetInfoRequest.FromString, pb.GetInfoResponse.SerializeToString),
                    "ScoreBatch": grpc.unary_unary_rpc_method_handler(
                        self.score_batch, pb.ScoreBatchRequest.FromString, pb.ScoreBatchResponse.SerializeToString)}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("grm.v1.RewardService",
                                                                                   handlers),))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    def info(self, request, context):
        return pb.GetInfoResponse(limits=pb.Limits(max_responses=4, max_batch_items=8),
                                  default_sampling=pb.SamplingOptions(k=1, temperature=0.5, top_p=1.0,
                                                                      max_new_tokens=16, seed=0, shuffle=True))

    def score_batch(self, request, context):
        self.items += request.items
        return pb.ScoreBatchResponse(results=[pb.ItemResult(result=pb.ScoreResult(
            responses=[pb.ResponseScore(scored=True, reward=float(r) + 2 * i, vote_sum=int(float(r)) + 2 * i,
                                        spread=0.0) for r in item.responses],
            num_samples=1, num_valid=1, num_used=1, best=0)) for i, item in enumerate(request.items)])

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop(None)


def test_score_rows_judges_a_group_past_max_responses_in_parts_aligned_on_anchors():
    """10 completions against max_responses 4: one ScoreBatch of 4 parts, each opening with the
    two anchors; every row is scored and the per-part bias (+0, +2, +4, +6) is gone."""
    rows = [Row(QUERY, f"{v}") for v in (2, 3, 5, 1, 4, 2, 3, 5, 1, 4)] + [Row("Other.", "1")]
    with Recording() as svc, RewardClient(svc.address, timeout_s=10) as client:
        scores = client.score_rows(rows)
    assert [list(it.responses) for it in svc.items] == [["2", "3", "5", "1"], ["2", "3", "4", "2"],
                                                        ["2", "3", "3", "5"], ["2", "3", "1", "4"], ["1"]]
    bias = (0 + 2 + 4 + 6) / 4  # anchors get their mean over the parts; every row is on that scale
    assert [s.reward for s in scores[:10]] == [float(r.response) + bias for r in rows[:10]]
    assert scores[10].reward == 1.0 + 2 * 4 and all(s.error is None for s in scores)

    async def main():
        async with AsyncRewardClient(svc.address, timeout_s=10) as client:
            return await client.score_rows(rows)

    with Recording() as svc:
        assert asyncio.run(main()) == scores


def test_score_rows_per_response_and_empty():
    with Recording() as svc, RewardClient(svc.address, timeout_s=10) as client:
        scores = client.score_rows([Row(QUERY, "3"), Row(QUERY, "5")], per_response=True)
        assert [list(it.responses) for it in svc.items] == [["3"], ["5"]]
        assert [s.reward for s in scores] == [3.0, 7.0] and [s.group_size for s in scores] == [1, 1]
        assert client.score_rows([]) == []
