"""Calls to a server whose engine is held by one long pass: shared work keeps its longest
caller's deadline, and every refusal and every call that ends early is counted under its
true reason in ``grm_requests_total``.

Each test starts its own in-process server (port 0) on the session's tiny judge and first
sends one Score with k=32 and 512 new tokens (a pass of a few seconds here), then waits
until that pass has started. Calls go through the raw generated stub, so each test sees
exactly the calls it made: no client retries, no GetInfo behind its back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from service_helpers import CONFIG, LIMITS, RESPONSES

from services.proto.grm.v1 import reward_pb2 as pb
from services.proto.grm.v1 import reward_pb2_grpc as pb_grpc
from services.server import BackgroundServer

Code = grpc.StatusCode
BUSY_LIMITS = dataclasses.replace(LIMITS, max_k=32, max_new_tokens=512)


def request(query: str, k: int = 2, max_new_tokens: int = 16,
            cache_policy: int = pb.CACHE_POLICY_USE) -> pb.ScoreRequest:
    return pb.ScoreRequest(input=pb.ScoreInput(conversation=[pb.Message(role="user", content=query)],
                                               responses=RESPONSES),
                           sampling=pb.SamplingOptions(k=k, max_new_tokens=max_new_tokens, seed=0),
                           cache_policy=cache_policy)


def wait_until(check, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@contextlib.contextmanager
def busy_server(judge, **config):
    """(server, stub, the long call's future), once the long call's engine pass has started."""
    cfg = dataclasses.replace(CONFIG, limits=BUSY_LIMITS, metrics_port=None, **config)
    with BackgroundServer(judge, config=cfg) as bg, grpc.insecure_channel(bg.address) as channel, \
            ThreadPoolExecutor(1) as pool:
        stub = pb_grpc.RewardServiceStub(channel)
        busy = pool.submit(stub.Score, request("busy: a long pass.", k=32, max_new_tokens=512,
                                               cache_policy=pb.CACHE_POLICY_BYPASS), timeout=120)
        wait_until(lambda: bg.metrics.value("grm_batch_size_count") >= 1)  # the pass is running
        yield bg, stub, busy
        assert len(busy.result().result.responses) == len(RESPONSES)


def requests_counted(bg, code: Code) -> float:
    return bg.metrics.value("grm_requests_total", method="Score", code=code.name)


def test_a_caller_joining_identical_work_keeps_its_own_longer_deadline(judge):
    x = request("shared: name a prime.")
    with busy_server(judge) as (bg, stub, busy), ThreadPoolExecutor(2) as pool:
        short = pool.submit(stub.Score, x, timeout=0.5)
        time.sleep(0.1)  # X is in flight, queued behind the long pass
        long = pool.submit(stub.Score, x, timeout=300)
        assert isinstance(short.exception(), grpc.RpcError) and short.exception().code() == Code.DEADLINE_EXCEEDED
        assert not busy.done()  # X was still waiting when its first caller's deadline passed
        reply = long.result(timeout=120)  # was DEADLINE_EXCEEDED: the shared work kept the first deadline
        assert reply.result.num_samples == 2 and not reply.result.from_cache
        assert bg.server.servicer.singleflight.coalesced == 1  # the second call did join the first


def test_calls_refused_by_the_concurrent_call_limit_are_counted(judge):
    with busy_server(judge, max_concurrent_rpcs=1) as (bg, stub, busy):
        refusals = []
        for i in range(3):
            with pytest.raises(grpc.RpcError) as err:
                stub.Score(request(f"refused {i}"), timeout=30)
            refusals.append(err.value)
        assert [e.code() for e in refusals] == [Code.RESOURCE_EXHAUSTED] * 3
        assert not busy.done()
    assert requests_counted(bg, Code.RESOURCE_EXHAUSTED) == 3  # was 0: grpc refused them unseen
    assert requests_counted(bg, Code.OK) == 1
    assert all("max_concurrent_rpcs" in e.details() for e in refusals)  # the message names the limit


def test_a_call_ended_by_its_deadline_is_not_counted_as_cancelled(judge):
    with busy_server(judge) as (bg, stub, busy):
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(request("late: name a prime."), timeout=0.3)
        assert err.value.code() == Code.DEADLINE_EXCEEDED
        left = stub.Score.future(request("left: name a prime."), timeout=60)
        time.sleep(0.3)
        left.cancel()  # the client gives up well before its deadline
        assert not busy.done()
        wait_until(lambda: requests_counted(bg, Code.DEADLINE_EXCEEDED) + requests_counted(bg, Code.CANCELLED) == 2,
                   timeout_s=10)
        assert requests_counted(bg, Code.DEADLINE_EXCEEDED) == 1  # was counted as CANCELLED
        assert requests_counted(bg, Code.CANCELLED) == 1
