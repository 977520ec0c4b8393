"""The score cache as the service uses it: a real redis-server, real gRPC, the tiny model.

Each test starts its own ``redis-server`` on a free port and its own in-process server
(port 0) whose cache is a ``RedisCache`` on it, so Redis can be killed, restarted or left
absent per test. Engine work is counted with the engine's own ``stats["calls"]`` (one
``generate`` call per engine pass) and the server's ``grm_items_total{source="computed"}``.
Sampling stays cheap: k=2 and 8 new tokens. Each result is two Redis entries (the result
without judgments, and its judgments); ``results_in`` lists the first and checks the second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis_fixtures import redis_server  # noqa: F401  (fixture)
from service_helpers import CONFIG

from grm.types import AggregationOptions, SamplingOptions, ScoreInput
from services.cache import DEFAULT_PREFIX, RedisCache, cache_key, unseal
from services.client import ItemError, RetryPolicy, RewardClient
from services.proto.grm.v1 import reward_pb2 as pb
from services.server import BackgroundServer
from services.result_store import judgments_key, read_result, result_entries
from services.testing.redis_servers import RedisServer, free_port

OPTS = dict(k=2, max_new_tokens=8, seed=0)
SERVE_CONFIG = dataclasses.replace(CONFIG, defaults=SamplingOptions(k=2, max_new_tokens=8), metrics_port=None)
CALM_TIMEOUT_S = 1.0  # Redis call timeout: the CI machine has 2 cores shared with other work


@contextlib.contextmanager
def serving(judge, url: str, **cache_options):
    """An in-process server on 127.0.0.1:0 with a RedisCache on ``url``, plus a client."""
    options = dict(timeout_s=CALM_TIMEOUT_S, backoff_min_s=0.2, backoff_max_s=0.5, log_every_s=60.0)
    options.update(cache_options)
    bg = BackgroundServer(judge, "127.0.0.1:0", SERVE_CONFIG,
                          cache_factory=lambda: RedisCache(url, **options)).start()
    try:
        with RewardClient(bg.address, timeout_s=60, retry=RetryPolicy(max_attempts=1)) as client:
            yield bg, client
    finally:
        bg.stop()


def engine_calls(judge) -> int:
    return judge.engine.stats["calls"]


def computed(bg) -> float:
    return bg.metrics.value("grm_items_total", source="computed")


def keys_in(redis_server) -> list[bytes]:
    with redis_server.client() as r:
        return sorted(r.keys(DEFAULT_PREFIX + "*"))


def results_in(redis_server) -> list[bytes]:
    """The key of each stored result; every one has its judgments entry beside it, nothing else is there."""
    keys = keys_in(redis_server)
    results = [k for k in keys if judgments_key(k.decode()).encode() in keys]
    assert sorted(results + [judgments_key(k.decode()).encode() for k in results]) == keys
    return results


def score(client, query: str, **extra):
    return client.score(query, ["7", "9"], **{**OPTS, **extra})


def wait_until(check, timeout_s: float = 10.0, every_s: float = 0.1):
    """Call ``check()`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(every_s)


# ---------------------------------------------------------------------------- (a) hit == miss

def test_hit_returns_the_miss_result_exactly(judge, redis_server):
    with serving(judge, redis_server.url) as (bg, client):
        calls = engine_calls(judge)
        miss = score(client, "hit-a: name a prime.", return_judgments=True)
        hit = score(client, "hit-a: name a prime.", return_judgments=True)
        assert (miss.from_cache, hit.from_cache) == (False, True)
        assert hit.result == miss.result  # rewards, judgments, invalid reasons, token counts
        assert len(hit.result.judgments) == OPTS["k"]
        assert engine_calls(judge) - calls == 1
        [key] = results_in(redis_server)
        # the key names the judge as it states itself (GenerativeRewardModel.cache_identity)
        sampling, aggregation = SamplingOptions(**OPTS), AggregationOptions()
        expected = cache_key(DEFAULT_PREFIX, judge.cache_identity(aggregation),
                             ScoreInput("hit-a: name a prime.", ["7", "9"]), sampling, aggregation)
        assert key.decode() == expected

        # the full result is stored: a miss without judgments still caches them
        first = score(client, "hit-a: judgments later.")
        again = score(client, "hit-a: judgments later.", return_judgments=True)
        assert not first.result.judgments and not first.from_cache
        assert again.from_cache and len(again.result.judgments) == OPTS["k"]
        assert again.result.rewards == first.result.rewards
        assert bg.server.cache.state() == "ok"


# ---------------------------------------------------------------------------- (b) REFRESH, BYPASS

def test_refresh_recomputes_and_overwrites(judge, redis_server):
    query = "refresh: name a prime."
    with serving(judge, redis_server.url) as (bg, client):
        base = score(client, query, return_judgments=True)
        [key] = results_in(redis_server)
        both = [key, judgments_key(key.decode()).encode()]
        with redis_server.client() as r:
            for k in both:
                r.set(k, b"sentinel: refresh must not read this", ex=1000)
        stats, calls = bg.server.cache.stats(), engine_calls(judge)

        fresh = score(client, query, cache_policy="refresh", return_judgments=True)
        assert not fresh.from_cache
        assert engine_calls(judge) - calls == 1  # recomputed
        after = bg.server.cache.stats()
        assert (after["corrupt"], after["hits"], after["misses"]) == (stats["corrupt"], stats["hits"],
                                                                     stats["misses"])  # not read
        assert after["writes"] == stats["writes"] + 2  # the result and its judgments
        with redis_server.client() as r:
            for k in both:
                blob, ttl = r.get(k), r.ttl(k)
                assert unseal(k.decode(), blob) is not None  # the sentinel was overwritten
                assert ttl > 1000  # with the cache's TTL (one day), not the sentinel's
        assert fresh.result == base.result  # same seed, same result

        hit = score(client, query, return_judgments=True)
        assert hit.from_cache and hit.result == base.result
        assert engine_calls(judge) - calls == 1


def test_bypass_neither_reads_nor_writes(judge, redis_server):
    with serving(judge, redis_server.url) as (bg, client):
        cached = score(client, "bypass: cached already.")
        assert len(results_in(redis_server)) == 1
        stats, calls = bg.server.cache.stats(), engine_calls(judge)

        a = score(client, "bypass: cached already.", cache_policy="bypass")  # in Redis, yet computed
        b = score(client, "bypass: never stored.", cache_policy="bypass")
        c = score(client, "bypass: never stored.", cache_policy="bypass")
        assert not (a.from_cache or b.from_cache or c.from_cache)
        assert a.result == cached.result and b.result == c.result
        assert engine_calls(judge) - calls == 3
        assert len(results_in(redis_server)) == 1
        assert bg.server.cache.stats() == stats  # no get, no set

        # and the bypassed input is still a miss under USE
        d = score(client, "bypass: never stored.")
        assert not d.from_cache and len(results_in(redis_server)) == 2


# ---------------------------------------------------------------------------- (c) TTL

def test_entries_expire_after_the_ttl(judge, redis_server):
    query = "ttl: name a prime."
    with serving(judge, redis_server.url, ttl_s=1) as (_bg, client):
        first = score(client, query)
        [key] = results_in(redis_server)
        with redis_server.client() as r:
            assert all(0 < r.pttl(k) <= 1000 for k in keys_in(redis_server))
        assert score(client, query).from_cache
        time.sleep(1.3)  # real time: Redis expires the key itself
        assert keys_in(redis_server) == []
        calls = engine_calls(judge)
        again = score(client, query)
        assert not again.from_cache and again.result == first.result
        assert engine_calls(judge) - calls == 1
        assert results_in(redis_server) == [key]  # stored again


# ---------------------------------------------------------------------------- (d) ScoreBatch

def test_batch_mixes_hits_and_misses_in_order(judge, redis_server):
    items = [ScoreInput("batch: first (cached)", ["1", "2"]),
             ScoreInput("batch: second (new)", ["1", "2", "3"]),
             ScoreInput("batch: third (cached)", ["1", "2", "3", "4"]),
             ScoreInput("batch: fourth (new)", ["1"])]
    with serving(judge, redis_server.url) as (_bg, client):
        before = {i: client.score(items[i].conversation, items[i].responses, return_judgments=True, **OPTS)
                  for i in (0, 2)}
        calls = engine_calls(judge)
        outs = client.score_batch(items, return_judgments=True, **OPTS)
        assert not any(isinstance(o, ItemError) for o in outs), outs
        assert [o.from_cache for o in outs] == [True, False, True, False]
        assert [len(o.result.rewards) for o in outs] == [2, 3, 4, 1]  # each answer in its item's place
        assert outs[0].result == before[0].result and outs[2].result == before[2].result
        assert engine_calls(judge) - calls == 1  # the two misses share one engine pass
        assert len(results_in(redis_server)) == 4

        # the misses were stored under their own keys
        for i in (1, 3):
            single = client.score(items[i].conversation, items[i].responses, return_judgments=True, **OPTS)
            assert single.from_cache and single.result == outs[i].result
        again = client.score_batch(items, return_judgments=True, **OPTS)
        assert [o.from_cache for o in again] == [True] * 4
        assert [o.result for o in again] == [o.result for o in outs]
        assert engine_calls(judge) - calls == 1


# ---------------------------------------------------------------------------- (e) singleflight

def test_identical_concurrent_requests_run_the_engine_once(judge, redis_server):
    n = 32
    with serving(judge, redis_server.url) as (bg, client):
        calls, items = engine_calls(judge), computed(bg)
        start = threading.Barrier(n)

        def one(_):
            start.wait()
            return score(client, "singleflight: name a prime.", return_judgments=True)

        with ThreadPoolExecutor(n) as pool:
            replies = list(pool.map(one, range(n)))
        coalesced = bg.server.servicer.singleflight.coalesced
        from_cache = sum(r.from_cache for r in replies)
        seen = dict(engine=engine_calls(judge) - calls, computed=computed(bg) - items, coalesced=coalesced,
                    from_cache=from_cache, cache=bg.server.cache.stats())
        assert engine_calls(judge) - calls == 1, repr(seen)
        assert computed(bg) - items == 1, seen
        assert all(r.result == replies[0].result for r in replies)
        assert len(results_in(redis_server)) == 1
        # Everyone but the leader joined a flight or read the leader's entry; a request that
        # joins a later flight answered from that entry counts on both sides, hence >=.
        assert coalesced + from_cache >= n - 1


# ---------------------------------------------------------------------------- (f) Redis dies

def test_redis_killed_mid_stream_then_restarted(judge, redis_server):
    with serving(judge, redis_server.url) as (bg, client):
        assert score(client, "outage: warm up.").from_cache is False
        assert client.info().cache_state == "ok"
        stop = threading.Event()
        failures: list[Exception] = []
        done = [0]

        def stream(worker: int):
            i = 0
            while not stop.is_set():
                try:
                    score(client, f"outage: worker {worker} request {i % 3}.")  # repeats: hits, then misses
                    done[0] += 1
                except Exception as e:  # any failed request fails the test
                    failures.append(e)
                i += 1

        with ThreadPoolExecutor(4) as pool:
            workers = [pool.submit(stream, w) for w in range(4)]
            wait_until(lambda: done[0] >= 8)
            redis_server.kill()
            at_kill = done[0]
            wait_until(lambda: done[0] >= at_kill + 12)  # requests keep flowing with Redis gone
            info = client.info()
            stop.set()
            for w in workers:
                w.result()
        assert failures == []
        assert info.cache_backend == "redis" and info.cache_state == "degraded"
        assert bg.server.cache.stats()["errors"] >= 1

        redis_server.start()  # same port, empty; the server is not restarted
        query = "outage: after the restart."
        # A hit may come through the replica lease's own connection before the cache's breaker
        # has let a probe through, so wait for both: the result read back and the cache healthy.
        wait_until(lambda: score(client, query).from_cache and client.info().cache_state == "ok",
                   timeout_s=15.0, every_s=0.2)
        assert len(results_in(redis_server)) >= 1


# ---------------------------------------------------------------------------- (g) Redis late

def test_redis_absent_at_start_then_started(judge):
    late = RedisServer(free_port())  # nothing listens there until late.start()
    try:
        with serving(judge, late.url) as (_bg, client):
            query = "late: name a prime."
            first = score(client, query)
            assert not first.from_cache
            assert not score(client, query).from_cache  # nothing to read from
            assert client.info().cache_state == "degraded"

            late.start()
            hit = wait_until(lambda: (r := score(client, query)).from_cache and r, timeout_s=15.0, every_s=0.2)
            assert hit.result == first.result
            assert client.info().cache_state == "ok"
            assert len(results_in(late)) == 1
    finally:
        late.stop()


# ---------------------------------------------------------------------------- (h) corrupt value

@pytest.mark.parametrize("entry", ["result", "judgments"])
@pytest.mark.parametrize("garbage", [b"", b"not ours at all", b"\xc5\x01" + b"\0" * 8 + b"\x08\x01"])
def test_corrupt_value_is_a_miss_and_is_overwritten(judge, redis_server, garbage, entry):
    query = f"corrupt: {garbage!r}"
    with serving(judge, redis_server.url) as (bg, client):
        first = score(client, query, return_judgments=True)
        [key] = results_in(redis_server)
        bad = key if entry == "result" else judgments_key(key.decode()).encode()
        with redis_server.client() as r:
            r.set(bad, garbage)
        corrupt, calls = bg.server.cache.stats()["corrupt"], engine_calls(judge)

        redo = score(client, query, return_judgments=True)
        assert not redo.from_cache and redo.result == first.result
        assert engine_calls(judge) - calls == 1
        # Read twice: the request's lookup, then the recheck just before computing.
        assert bg.server.cache.stats()["corrupt"] == corrupt + 2
        with redis_server.client() as r:
            assert unseal(bad.decode(), r.get(bad)) is not None  # overwritten with a good value
        hit = score(client, query, return_judgments=True)
        assert hit.from_cache and hit.result == first.result


# ---------------------------------------------------------------------------- (i) the split entry

def test_the_two_entries_parse_back_to_the_stored_message():
    msg = pb.ScoreResult(num_samples=2, num_valid=1, num_used=1, best=1, prompt_tokens=30, completion_tokens=9,
                         aggregation=pb.AGGREGATION_METHOD_META_VOTING, latency_ms=3.5)
    msg.responses.add(scored=False, vote_sum=0)
    msg.responses.add(scored=True, reward=7.0, vote_sum=7, spread=0.0)
    msg.invalid_reasons["no_scores"] = 1
    msg.judgments.add(text="t", principles="p", critique="c", scores=[3, 7], permutation=[1, 0], valid=True,
                      num_tokens=5, meta_score=0.25)
    msg.judgments.add(text="junk", permutation=[0, 1], valid=False, invalid_reason="no_scores", num_tokens=4)
    key = DEFAULT_PREFIX + "ab"
    (k1, summary), (k2, judgments) = result_entries(key, msg)
    assert (k1, k2) == (key, judgments_key(key)) and k2 != key
    blobs = {k1: summary, k2: judgments}

    expected = pb.ScoreResult()
    expected.CopyFrom(msg)
    expected.from_cache = True
    assert read_result(key, blobs, True) == expected
    del expected.judgments[:]
    assert read_result(key, blobs, False) == expected
    assert read_result(key, {k1: summary, k2: None}, True) is None  # judgments lost: a miss
    assert read_result(key, {k2: judgments}, False) is None
    assert read_result(key, {k1: b"\xff", k2: judgments}, True) is None  # does not parse: a miss


def test_a_hit_without_judgments_reads_only_the_small_entry(judge, redis_server):
    query = "split: name a prime."
    with serving(judge, redis_server.url) as (bg, client):
        full = score(client, query, return_judgments=True)
        [key] = results_in(redis_server)
        jkey = judgments_key(key.decode()).encode()
        with redis_server.client() as r:
            small, judgments = r.get(key), r.get(jkey)
            assert len(small) < len(judgments)  # k critiques outweigh rewards and counts
            r.set(jkey, b"garbage a hit without judgments never reads")
        corrupt, calls = bg.server.cache.stats()["corrupt"], engine_calls(judge)

        lean = score(client, query)
        assert lean.from_cache and not lean.result.judgments
        assert lean.result == dataclasses.replace(full.result, judgments=())
        assert bg.server.cache.stats()["corrupt"] == corrupt  # the judgments entry was not read

        again = score(client, query, return_judgments=True)  # needs both: a miss, both rewritten
        assert not again.from_cache and again.result == full.result
        assert engine_calls(judge) - calls == 1
        with redis_server.client() as r:
            assert unseal(jkey.decode(), r.get(jkey)) is not None  # the garbage was overwritten
        hit = score(client, query, return_judgments=True)
        assert hit.from_cache and hit.result == full.result


# ---------------------------------------------------------------------------- (j) GetInfo probes

def test_info_probes_redis_instead_of_repeating_the_last_outcome(judge, redis_server):
    with serving(judge, redis_server.url) as (bg, client):
        assert not score(client, "probe: warm up.").from_cache
        assert client.info().cache_state == "ok"
        redis_server.kill()
        assert bg.server.cache.state() == "ok"  # no request has touched Redis since the kill
        assert client.info().cache_state == "degraded"  # but GetInfo asked it
        redis_server.start()
        wait_until(lambda: client.info().cache_state == "ok", timeout_s=15.0, every_s=0.2)
