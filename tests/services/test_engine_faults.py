"""A remote engine that stalls or answers garbage, behind a real HTTP proxy in front of a real
llama.cpp server (services/testing/engine_proxy.py): the service stays responsive, cancels
what nobody waits for, stops promptly, and answers UNAVAILABLE naming the URL."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from llama_fixtures import connect, gguf, llama, tokenizer  # noqa: F401 (fixtures)
from service_helpers import CONFIG, RESPONSES

from grm.default_model import PACKAGED
from grm.engine import EngineUnavailable, GenerationRequest, pass_deadline
from grm.judge import GenerativeRewardModel
from services.proto.grm.v1 import reward_pb2 as pb
from services.proto.grm.v1 import reward_pb2_grpc as pb_grpc
from services.scheduler import SchedulerConfig
from services.server import BackgroundServer
from services.testing.engine_proxy import EngineProxy

pytestmark = pytest.mark.slow
Code = grpc.StatusCode


@pytest.fixture
def proxy(llama):
    p = EngineProxy(llama.url).start()
    yield p
    p.stop()


@contextlib.contextmanager
def service(proxy, tokenizer, workers: int = 1):
    """(stub, stop) of a started service whose remote engine sits behind ``proxy``; ``stop(grace)``
    stops it (once; leaving the block stops it too)."""
    engine = connect([proxy.url], tokenizer)
    judge = GenerativeRewardModel.load(str(PACKAGED), engine=engine)
    config = dataclasses.replace(CONFIG, metrics_port=None, scheduler=SchedulerConfig(max_wait_ms=5, workers=workers))
    bg = BackgroundServer(judge, config=config).start()
    stopped = []

    def stop(grace: float = 5.0) -> None:
        if not stopped:
            stopped.append(grace)
            bg.stop(grace)
    try:
        with grpc.insecure_channel(bg.address) as channel:
            yield pb_grpc.RewardServiceStub(channel), stop
    finally:
        stop()
        engine.close()


def request(query: str) -> pb.ScoreRequest:
    return pb.ScoreRequest(input=pb.ScoreInput(conversation=[pb.Message(role="user", content=query)],
                                               responses=RESPONSES),
                           sampling=pb.SamplingOptions(k=2, max_new_tokens=16, seed=0),
                           cache_policy=pb.CACHE_POLICY_BYPASS)


def wait_until(check, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)


def test_a_reply_that_stalls_halfway_is_cut_by_the_read_timeout(proxy, tokenizer):
    engine = connect([proxy.url], tokenizer, read_timeout_s=1.0)
    try:
        proxy.stall()
        start = time.monotonic()
        with pytest.raises(EngineUnavailable) as e, pass_deadline(lambda: start + 60):
            engine.generate([GenerationRequest(tuple(tokenizer("Hello").input_ids), max_new_tokens=8)])
        took = time.monotonic() - start
    finally:
        engine.close()
    assert took < 10, took  # was: held until the 60 s deadline
    assert proxy.url in str(e.value) and "stalled mid-reply" in str(e.value)


def test_a_cancelled_call_cancels_its_engine_request_and_frees_the_worker(proxy, tokenizer):
    """The probe's case: no deadline, cancelled after a while; later calls are answered."""
    with service(proxy, tokenizer) as (stub, stop):
        proxy.stall(1)
        held = stub.Score.future(request("held: name a prime."))  # no deadline
        wait_until(lambda: proxy.stalled == 1)
        time.sleep(0.5)
        held.cancel()
        wait_until(lambda: proxy.closed_by_client == 1)  # was: kept open for the 600 s request timeout
        reply = stub.Score(request("later: name a prime."), timeout=10)
    assert len(reply.result.responses) == len(RESPONSES)


def test_a_stalled_call_holds_one_pass_not_the_service(proxy, tokenizer):
    with service(proxy, tokenizer, workers=4) as (stub, stop), ThreadPoolExecutor(1) as pool:
        proxy.stall(1)
        held = pool.submit(stub.Score, request("held: name a prime."), timeout=120)
        wait_until(lambda: proxy.stalled == 1)
        reply = stub.Score(request("beside it: name a prime."), timeout=10)  # was: DEADLINE_EXCEEDED
        assert not held.done()
        proxy.release()  # the held reply ends mid-body: that URL failed the call
        assert held.exception(30).code() == Code.UNAVAILABLE
    assert len(reply.result.responses) == len(RESPONSES)


def test_stopping_does_not_wait_for_a_stalled_engine(proxy, tokenizer):
    with service(proxy, tokenizer) as (stub, stop):
        proxy.stall()
        held = stub.Score.future(request("held: name a prime."))  # no deadline
        wait_until(lambda: proxy.stalled == 1)
        start = time.monotonic()
        stop(1.0)
        took = time.monotonic() - start
        assert isinstance(held.exception(10), grpc.RpcError)
    assert took < 8, took  # was: 30 s and more, the pass held for the 600 s request timeout
    assert proxy.closed_by_client == 1


@pytest.mark.parametrize("reply", [
    lambda body: {"choices": ["a", "a"]},
    lambda body: {"choices": [{"index": i, "text": "", "tokens": [10 ** 12], "finish_reason": "stop"}
                              for i in range(body["n"])]},
    lambda body: {"choices": [{"index": "first", "text": "x"} for _ in range(body["n"])]},
], ids=["choices-not-objects", "token-id-out-of-range", "index-not-an-integer"])
def test_a_malformed_reply_is_unavailable_naming_the_url(proxy, tokenizer, reply):
    with service(proxy, tokenizer) as (stub, stop):
        proxy.answer(reply)
        with pytest.raises(grpc.RpcError) as e:
            stub.Score(request("garbage: name a prime."), timeout=30)
    assert e.value.code() == Code.UNAVAILABLE, e.value.details()  # was: INTERNAL (AttributeError, OverflowError)
    assert proxy.url in e.value.details() and "malformed reply" in e.value.details()
