"""services/cache.py against a real ``redis-server`` on a free port (no mocks): it is killed,
restarted, put to sleep and fed foreign values, and the cache degrades to uncached scoring
and comes back by itself. Each test drives its coroutine with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import pytest
from redis_fixtures import redis_server  # noqa: F401  (fixture)
from services.cache import RedisCache, seal
from services.testing.redis_servers import RedisServer, free_port
from test_cache import CALM, eventually, answers


# ---------------------------------------------------------------------------- redis

def test_redis_one_mget_per_lookup_and_one_pipeline_per_write(redis_server):
    client = redis_server.client()
    items = [(f"k{i}", b"v" * 200) for i in range(50)]

    async def main():
        cache = RedisCache(redis_server.url, timeout_s=CALM)
        await cache.get_many(["warm-up"])  # the connection's own setup commands happen here
        client.config_resetstat()
        reads = client.info("stats")["total_reads_processed"]
        await cache.set_many(items)
        # one read event for the whole pipeline, one for the INFO below (vs 51 unpipelined)
        assert client.info("stats")["total_reads_processed"] - reads <= 3
        assert await cache.get_many([k for k, _ in items]) == [v for _, v in items]
        calls = {name: s["calls"] for name, s in client.info("commandstats").items()}
        assert calls["cmdstat_mget"] == 1 and calls["cmdstat_set"] == 50
        assert not {"cmdstat_get", "cmdstat_multi", "cmdstat_exec"} & calls.keys()
        await cache.close()

    asyncio.run(main())


def test_redis_ttl_expires(redis_server):
    client = redis_server.client()

    async def main():
        cache = RedisCache(redis_server.url, ttl_s=1, timeout_s=CALM)
        await cache.set_many([("a", b"1")])
        assert client.ttl("a") == 1 and await cache.get_many(["a"]) == [b"1"]
        await asyncio.sleep(1.1)
        assert await cache.get_many(["a"]) == [None]
        forever = RedisCache(redis_server.url, ttl_s=None, timeout_s=CALM)
        await forever.set_many([("b", b"2")])
        assert client.ttl("b") == -1  # no expiry
        await cache.close()
        await forever.close()

    asyncio.run(main())


def test_redis_corrupt_or_foreign_value_is_a_counted_miss_then_overwritten(redis_server, caplog):
    client = redis_server.client()
    client.set("garbage", b"\xc5\x01 definitely not a checksum")
    client.set("truncated", seal("truncated", b"payload")[:-1])
    client.set("moved", seal("elsewhere", b"payload"))
    client.rpush("a-list", b"x")  # another type altogether: MGET reads it as nil

    async def main():
        cache = RedisCache(redis_server.url, timeout_s=CALM, log_every_s=60)
        keys = ["garbage", "truncated", "moved", "a-list"]
        assert await cache.get_many(keys) == [None] * 4
        stats = cache.stats()
        assert stats["corrupt"] == 3 and stats["misses"] == 4 and stats["errors"] == 0
        assert cache.state() == "ok"  # a bad value is not a sick Redis
        await cache.set_many([(k, k.encode()) for k in keys])
        assert await cache.get_many(keys) == [k.encode() for k in keys]
        await cache.close()

    with caplog.at_level(logging.WARNING, logger="services.cache"):
        asyncio.run(main())
    assert len([r for r in caplog.records if "corrupt" in r.getMessage()]) == 1  # rate-limited


def test_redis_absent_at_start_then_started_later(caplog):
    port = free_port()

    async def main():
        cache = RedisCache(f"redis://127.0.0.1:{port}/0", timeout_s=CALM,
                           backoff_min_s=0.1, backoff_max_s=0.2, log_every_s=60)
        t0 = time.monotonic()
        assert await cache.get_many(["a", "b"]) == [None, None]
        assert time.monotonic() - t0 < CALM / 2  # refused at once: no waiting for the timeout
        assert cache.state() == "degraded" and cache.stats()["errors"] == 1
        t0 = time.monotonic()
        for _ in range(200):  # the breaker is open: no network at all
            assert await cache.get_many(["a"]) == [None]
            await cache.set_many([("a", b"1")])
        assert time.monotonic() - t0 < 0.1
        assert cache.stats()["errors"] == 1 and cache.stats()["skipped"] == 400
        assert cache.stats()["dropped"] == 200
        for _ in range(3):  # each probe past the backoff fails again, and is counted
            await asyncio.sleep(0.21)
            assert await cache.get_many(["a"]) == [None]
        assert cache.stats()["errors"] == 4 and cache.state() == "degraded"

        with RedisServer(port=port):  # Redis comes up on that port: the same object recovers
            await asyncio.sleep(0.25)  # past the backoff
            await eventually(lambda: answers(cache), timeout_s=3)
            assert cache.state() == "ok"
            await cache.set_many([("a", b"1")])
            assert await cache.get_many(["a"]) == [b"1"]
        await cache.close()

    with caplog.at_level(logging.WARNING, logger="services.cache"):
        asyncio.run(main())
    assert len([r for r in caplog.records if "get failed" in r.getMessage()]) == 1  # rate-limited
    assert any("caching resumed" in r.getMessage() for r in caplog.records)


def test_redis_killed_mid_stream_degrades_then_recovers(redis_server):
    hits = [0]

    async def worker(cache, i, stop):
        while not stop.is_set():
            [got] = await cache.get_many([f"k{i}"])
            hits[0] += got == b"v"
            await cache.set_many([(f"k{i}", b"v")])
            await asyncio.sleep(0.005)

    async def main():
        cache = RedisCache(redis_server.url, timeout_s=CALM, backoff_min_s=0.05, backoff_max_s=0.2)
        stop = asyncio.Event()
        workers = [asyncio.create_task(worker(cache, i, stop)) for i in range(32)]
        deadline = time.monotonic() + 5
        while hits[0] < 32:  # caching works before the crash
            assert time.monotonic() < deadline, f"no hits before the kill: {cache.stats()}"
            await asyncio.sleep(0.01)
        redis_server.kill()
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*workers)  # any exception would fail the test here
        assert cache.state() == "degraded" and cache.stats()["errors"] >= 1

        await asyncio.to_thread(redis_server.start)  # same port, empty
        async def hits_again():
            await cache.set_many([("back", b"1")])
            return await cache.get_many(["back"]) == [b"1"]
        await eventually(hits_again)
        assert cache.state() == "ok"
        await cache.close()

    asyncio.run(main())


def test_redis_slow_server_returns_misses_quickly(redis_server):
    sleeper = threading.Thread(target=lambda: redis_server.client().execute_command("DEBUG", "SLEEP", 1))

    async def main():
        cache = RedisCache(redis_server.url, timeout_s=0.05, backoff_min_s=0.1, backoff_max_s=0.2)
        async def hits():
            await cache.set_many([("a", b"1")])
            return await cache.get_many(["a"]) == [b"1"]
        await eventually(hits)
        sleeper.start()  # the server stops answering for a second
        deadline = time.monotonic() + 0.9
        while cache.state() == "ok":  # until our call lands inside the sleep
            assert time.monotonic() < deadline
            t0 = time.monotonic()
            got = await cache.get_many(["a"])
            assert time.monotonic() - t0 < 0.3  # a hit, or a miss after timeout_s
            await asyncio.sleep(0.01)
        assert got == [None]
        t0, dropped = time.monotonic(), cache.stats()["dropped"]
        await cache.set_many([("b", b"2")])  # the breaker is open: dropped at once
        assert time.monotonic() - t0 < 0.05 and cache.stats()["dropped"] == dropped + 1
        await asyncio.to_thread(sleeper.join)

        await eventually(hits)
        assert cache.state() == "ok"
        await cache.close()

    asyncio.run(main())


def test_redis_hung_socket_returns_misses_quickly():
    """A peer that accepts TCP connections and never answers (a hung host, a wrong service)."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)  # connections complete in the kernel backlog; nobody reads them

        async def main():
            cache = RedisCache(f"redis://127.0.0.1:{hole.getsockname()[1]}/0", timeout_s=0.05)
            t0 = time.monotonic()
            assert await cache.get_many(["a"]) == [None]
            assert time.monotonic() - t0 < 0.3 and cache.state() == "degraded"
            await cache.close()

        asyncio.run(main())


def test_redis_first_use_after_recovery_does_not_trip_on_connections_from_before_the_crash(redis_server):
    """Connections pooled before Redis died are dead; the first call on each after Redis is
    back must not fail (it did: state flipped back to degraded and those writes were lost)."""
    keys = [f"k{i}" for i in range(8)]

    async def main():
        cache = RedisCache(redis_server.url, timeout_s=CALM, backoff_min_s=0.05, backoff_max_s=0.1)
        await asyncio.gather(*(cache.set_many([(k, b"before")]) for k in keys))  # 8 pooled connections
        redis_server.kill()
        assert await cache.get_many(["x"]) == [None] and cache.state() == "degraded"
        await asyncio.to_thread(redis_server.start)  # same port, empty
        await eventually(lambda: answers(cache))  # a probe found Redis back
        before = cache.stats()
        await asyncio.gather(*(cache.set_many([(k, b"after")]) for k in keys))  # the old connections again
        after = cache.stats()
        assert (after["errors"], after["dropped"], cache.state()) == (before["errors"], before["dropped"], "ok")
        assert await cache.get_many(keys) == [b"after"] * len(keys)
        await cache.close()

    asyncio.run(main())


@pytest.mark.parametrize("kwargs", [dict(ttl_s=0), dict(ttl_s=1.5), dict(timeout_s=0),
                                    dict(backoff_min_s=2.0, backoff_max_s=1.0)])
def test_redis_rejects_bad_config(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RedisCache("redis://127.0.0.1:1/0", **kwargs)
