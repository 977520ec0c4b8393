"""Adaptive k and shared principles through the service: real gRPC on loopback, a real
redis-server as the score cache, and a judge on ``grm.testing.NoisyRuleEngine`` (valid,
seeded judgments in milliseconds, so inputs really stop early)."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from redis_fixtures import redis_server  # noqa: F401  (fixture)
from service_helpers import CONFIG

from grm import GenerativeRewardModel, ScoreInput
from grm.testing import NoisyRuleEngine
from grm.types import SamplingOptions
from services.cache import RedisCache
from services.client import RetryPolicy, RewardClient
from services.server import BackgroundServer

SERVE_CONFIG = dataclasses.replace(CONFIG, defaults=SamplingOptions(k=8, max_new_tokens=64), metrics_port=None)
CLEAR = ("Pick the biggest.", ["value 9", "value 2"])


@pytest.fixture
def served(redis_server):  # noqa: F811
    engine = NoisyRuleEngine()
    bg = BackgroundServer(GenerativeRewardModel(engine), "127.0.0.1:0", SERVE_CONFIG,
                          cache_factory=lambda: RedisCache(redis_server.url)).start()
    try:
        with RewardClient(bg.address, timeout_s=60, retry=RetryPolicy(max_attempts=1)) as client:
            yield engine, client
    finally:
        bg.stop()


def test_adaptive_result_is_reported_and_cached(served):
    engine, client = served
    first = client.score(*CLEAR, k=8, seed=1, adaptive="confident", return_judgments=True)
    assert not first.from_cache
    assert first.result.stop_reason == "confident" and len(first.result.judgments) < 8
    calls = len(engine.calls)
    again = client.score(*CLEAR, k=8, seed=1, adaptive="confident", return_judgments=True)
    assert again.from_cache and len(engine.calls) == calls
    assert again.result == first.result
    # adaptive is part of the key: the same input with all k is computed, and reports no stop
    fixed = client.score(*CLEAR, k=8, seed=1)
    assert not fixed.from_cache and fixed.result.stop_reason == "" and len(engine.calls) > calls


def test_batch_options_pass_through(served):
    engine, client = served
    items = [ScoreInput(CLEAR[0], [r]) for r in ("value 3", "value 8", "value 5")]
    outs = client.score_batch(items, k=4, seed=2, shared_principles=True, adaptive="decided",
                              return_judgments=True)
    assert len(engine.calls[0]) == 1 and engine.calls[0][0].n == 1          # one principles draft
    assert all(o.result.stop_reason == "budget" for o in outs)               # N = 1 uses all k
    assert all(len(o.result.judgments) == 4 for o in outs)


@pytest.mark.parametrize("options, message", [
    (dict(adaptive="sometimes"), "sampling.adaptive must be one of off, decided, confident, got 'sometimes'"),
    (dict(adaptive="confident", adaptive_z=-1.0), "sampling.adaptive_z must be in (0, 100], got -1.0"),
])
def test_bad_adaptive_options_are_invalid_argument(served, options, message):
    _, client = served
    with pytest.raises(grpc.RpcError) as err:
        client.score(*CLEAR, k=4, **options)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    assert client.score(*CLEAR, k=2).result.num_valid == 2                   # still serving
