"""The remote engine's URL pool: least outstanding work first, and ejection with a back-off
that one episode lengthens once. Re-admission by the prober is tested on real llama.cpp
servers (test_remote_engine.py)."""

from __future__ import annotations

import pytest

from services.engine_pool import EnginePool, PoolConfig
from services.remote_engine import RemoteConfig


def test_calls_go_to_the_least_loaded_live_url():
    pool = EnginePool(["http://a", "http://b/"])
    a, b = pool.endpoints
    assert b.url == "http://b"
    with pool.busy(a, work=300):
        assert pool.pick() is b
        with pool.busy(b, work=500):
            assert pool.pick() is a
            assert pool.pick(avoid={"http://a"}) is b
    assert (a.outstanding, b.outstanding) == (0, 0)


def test_an_ejected_url_gets_nothing_and_one_episode_backs_off_once():
    pool = EnginePool(["http://a", "http://b"], PoolConfig(eject_min_s=1, eject_max_s=8))
    a, b = pool.endpoints
    for _ in range(5):  # five calls in flight fail together: one episode
        pool.eject(a, "connection refused")
    assert not a.live and a.failures == 1 and a.counts["failed"] == 5 and a.counts["ejected"] == 1
    assert pool.pick() is b and pool.pick(avoid={"http://b"}) is b
    pool.eject(b, "HTTP 503")
    assert pool.pick() is None
    assert "http://a: connection refused" in pool.describe_down()


@pytest.mark.parametrize("urls, message", [((), "at least one"), (("10.0.0.1:8000",), "http://"),
                                           (("http://a", "http://a/"), "twice"),
                                           (("http://a/v1", "http://a"), "twice")])
def test_remote_config_names_the_bad_field(urls, message):
    with pytest.raises(ValueError, match=message):
        RemoteConfig(urls)


@pytest.mark.parametrize("given", ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/",
                                   " http://h:8000/v1 "])
def test_a_url_is_taken_with_or_without_the_v1_base(given):
    """OpenAI clients are given http://HOST:PORT/v1; the paths added here start above it (was: /v1/v1/models)."""
    assert RemoteConfig((given,)).urls == ("http://h:8000",)
    assert RemoteConfig(("http://h/prefix/v1",)).urls == ("http://h/prefix",)


def test_remote_config_bounds_the_read_timeout():
    with pytest.raises(ValueError, match="RemoteConfig.read_timeout_s must be > 0, got 0"):
        RemoteConfig(("http://a",), read_timeout_s=0)
    with pytest.raises(ValueError, match="read_timeout_s \\(700\\) must not exceed request_timeout_s \\(600"):
        RemoteConfig(("http://a",), read_timeout_s=700)
