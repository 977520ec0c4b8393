"""A call that is cancelled (or passes its deadline) stops costing engine time, also in the
middle of an engine pass: its rows leave the batch within a few decoding steps.

32 requests (k=4, 64 new tokens on the tiny random model, which rarely stops early) are sent
at once and cancelled 100 ms later, or once their shared pass has begun decoding (the case
only the engine can help: the scheduler drops work that is gone before its pass starts). The engine's own token counter (the server's engine)
is read at the cancel and after the pass; the tokens generated after the cancel must be
under 10% of what the same requests cost when nobody cancels them. The server's metrics
say the same from the outside: ``grm_generated_tokens_total{callers="gone"}`` (every token
generated for inputs whose callers had left, before the cancel or after) stays under that
bound too, and the metric's total agrees with the engine's counter.
"""

from __future__ import annotations

import time
from dataclasses import replace

import grpc
import pytest

from service_helpers import CONFIG, QUERY
from services.proto.grm.v1 import reward_pb2 as pb
from services.scheduler import SchedulerConfig
from services.server import BackgroundServer

CALLS = 32


def requests(seed: int) -> list[bytes]:
    out = []
    for i in range(CALLS):
        item = pb.ScoreInput(conversation=[pb.Message(role="user", content=f"{QUERY} ({seed}, {i})")],
                             responses=["7", "9", "11"])
        out.append(pb.ScoreRequest(input=item, sampling=pb.SamplingOptions(k=4, max_new_tokens=64, seed=seed + i),
                                   cache_policy=pb.CACHE_POLICY_BYPASS).SerializeToString())
    return out


def idle(engine, settle_s: float = 0.5, limit_s: float = 120.0) -> int:
    """The engine's generated-token count once it has stopped moving."""
    end = time.monotonic() + limit_s
    last = engine.stats["generated_tokens"]
    while time.monotonic() < end:
        time.sleep(settle_s)
        now = engine.stats["generated_tokens"]
        if now == last:
            return now
        last = now
    raise AssertionError("the engine kept generating")


def decoding_started(engine, before: int, limit_s: float = 60.0) -> None:
    end = time.monotonic() + limit_s
    while engine.stats["generated_tokens"] == before:
        assert time.monotonic() < end, "the pass never started decoding"
        time.sleep(0.002)


@pytest.fixture(scope="module")
def gathering_server(judge):
    """The 32 calls must share one engine pass: a batching window wide enough to gather them."""
    config = replace(CONFIG, scheduler=SchedulerConfig(max_wait_ms=300, max_linger_ms=3000))
    bg = BackgroundServer(judge, "127.0.0.1:0", config).start()
    yield bg
    bg.stop()


@pytest.mark.parametrize("when", ["100 ms after sending", "once decoding began"])
def test_cancelled_calls_leave_the_engine_pass(gathering_server, judge, when):
    engine = judge.engine
    with grpc.insecure_channel(gathering_server.address) as channel:
        score = channel.unary_unary("/grm.v1.RewardService/Score")
        before = idle(engine)
        for future in [score.future(r, timeout=300) for r in requests(1000)]:
            future.result()
        full_cost = idle(engine) - before

        before, abandoned = idle(engine), engine.stats["abandoned_rows"]
        metrics = gathering_server.metrics
        gone_before = metrics.value("grm_generated_tokens_total", callers="gone")
        total_before = gone_before + metrics.value("grm_generated_tokens_total", callers="waiting")
        futures = [score.future(r, timeout=300) for r in requests(5000 if when.startswith("100") else 9000)]
        time.sleep(0.1)
        if when == "once decoding began":  # mid-pass: only the engine can stop this work now
            decoding_started(engine, before)
        at_cancel = engine.stats["generated_tokens"]
        for future in futures:
            future.cancel()
        after = idle(engine)
    assert all(f.cancelled() or f.exception().code() is grpc.StatusCode.CANCELLED for f in futures)
    spent_after_cancel = after - at_cancel
    gone = metrics.value("grm_generated_tokens_total", callers="gone") - gone_before
    total = metrics.value("grm_generated_tokens_total", callers="gone") + metrics.value(
        "grm_generated_tokens_total", callers="waiting") - total_before
    print(f"full cost {full_cost} tokens; before the cancel {at_cancel - before}; after it {spent_after_cancel}; "
          f"server metrics: {gone:.0f} tokens for callers gone, {total:.0f} in all")
    assert total == after - before  # the metric counts what the engine generated
    assert gone < 0.10 * full_cost
    assert full_cost >= CALLS * 4 * 32  # the uncancelled run really decoded (most rows run to 64 tokens)
    assert spent_after_cancel < 0.10 * full_cost
    if when == "once decoding began":  # one pass held them all, and the engine dropped their rows
        assert at_cancel > before and engine.stats["abandoned_rows"] - abandoned == CALLS * 4
