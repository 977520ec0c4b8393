"""services/cache.py: exact keys, both caches' shared properties, Redis faults.

Redis tests run against a real ``redis-server`` on a free port (no mocks): it is killed,
restarted, put to sleep and fed foreign values to check that the cache degrades to
uncached scoring and comes back by itself. Each test drives its coroutine with
``asyncio.run``, building the cache inside that loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import socket
import threading
import time

import pytest
from redis_fixtures import RedisServer, free_port, redis_server  # noqa: F401  (fixture)

from grm.types import Aggregation, AggregationOptions, Message, SamplingOptions, ScoreInput
from services.cache import DEFAULT_PREFIX, MemoryCache, RedisCache, cache_key, seal, unseal

# ---------------------------------------------------------------------------- keys

ITEM = ScoreInput([Message("system", "Be brief."), Message("user", "Name a prime.")], ["7", "9"],
                  principles="Correctness (60%)", reference="7")
SAMPLING = SamplingOptions(k=4, temperature=0.5, top_p=0.9, max_new_tokens=64, seed=3, shuffle=True)
AGG = AggregationOptions(Aggregation.META_VOTING, k_meta=2)
CALM = 1.0  # timeout_s for tests that are not about slowness: CI machines may be loaded
IDENTITY = dict(model_id="tiny-grm", revision="ab12", template_version="default-v1")
BASE = dict(prefix=DEFAULT_PREFIX, item=ITEM, sampling=SAMPLING, aggregation=AGG)


def key(identity: dict | None = None, **changes) -> str:
    return cache_key(identity=IDENTITY if identity is None else identity, **{**BASE, **changes})


async def eventually(check, timeout_s: float = 5.0) -> None:
    """Poll ``await check()`` until true; a loaded CI machine may need a few tries."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def answers(cache) -> bool:
    """Probe now (when the breaker allows) and say whether Redis answered."""
    return await cache.check() == "ok"


# One changed value per field of the records: a field added later fails here until listed.
SAMPLING_CHANGES = dict(k=5, temperature=0.7, top_p=1.0, max_new_tokens=65, seed=4, shuffle=False,
                        adaptive="confident", adaptive_z=3.0, shared_principles=True)
AGG_CHANGES = dict(aggregation=Aggregation.VOTING, k_meta=3)
ITEM_CHANGES = {
    "conversation: content": ScoreInput([Message("system", "Be brief."), Message("user", "Name a primE.")],
                                        ITEM.responses, ITEM.principles, ITEM.reference),
    "conversation: role": ScoreInput([Message("user", "Be brief."), Message("user", "Name a prime.")],
                                     ITEM.responses, ITEM.principles, ITEM.reference),
    "conversation: one turn less": ScoreInput([Message("user", "Name a prime.")], ITEM.responses,
                                              ITEM.principles, ITEM.reference),
    "responses: order": ScoreInput(ITEM.conversation, ["9", "7"], ITEM.principles, ITEM.reference),
    "responses: split": ScoreInput(ITEM.conversation, ["7", "9", ""], ITEM.principles, ITEM.reference),
    "responses: joined": ScoreInput(ITEM.conversation, ["7\",\"9"], ITEM.principles, ITEM.reference),
    "principles": ScoreInput(ITEM.conversation, ITEM.responses, None, ITEM.reference),
    "reference": ScoreInput(ITEM.conversation, ITEM.responses, ITEM.principles, "2"),
}


def test_key_format_and_determinism():
    k = key()
    assert k == key() and k.startswith(DEFAULT_PREFIX)
    digest = k[len(DEFAULT_PREFIX):]
    assert digest[0] + digest[-1] == "{}"  # a Redis Cluster hash tag: the input's keys share a slot
    assert len(digest) == 66 and int(digest[1:-1], 16) >= 0
    assert key(prefix="grm:v2:").endswith(digest)  # the prefix namespaces, the digest is the content


def test_key_is_the_sha256_of_a_canonical_json_text():
    # Written out by hand: sorted keys, no spaces, enums as their values, integral floats as ints.
    text = ('{"aggregation":{"aggregation":"meta_voting","k_meta":2},'
            '"item":{"conversation":[{"content":"Be brief.","role":"system"},'
            '{"content":"Name a prime.","role":"user"}],'
            '"principles":"Correctness (60%)","reference":"7","responses":["7","9"]},'
            '"model_id":"tiny-grm","revision":"ab12",'
            '"sampling":{"adaptive":"off","adaptive_z":2,"k":4,"max_new_tokens":64,"seed":3,'
            '"shared_principles":false,"shuffle":true,"temperature":0.5,"top_p":0.9},'
            '"template_version":"default-v1"}')
    assert key() == DEFAULT_PREFIX + "{" + hashlib.sha256(text.encode()).hexdigest() + "}"
    ints = text.replace('"temperature":0.5,"top_p":0.9', '"temperature":2,"top_p":1')
    floats = dataclasses.replace(SAMPLING, temperature=2.0, top_p=1.0)
    assert key(sampling=floats) == DEFAULT_PREFIX + "{" + hashlib.sha256(ints.encode()).hexdigest() + "}"


def test_equal_inputs_in_other_forms_give_equal_keys():
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}]
    as_dicts = ScoreInput(turns, ("7", "9"), principles="Correctness (60%)", reference="7")
    assert key(item=as_dicts) == key()
    bare = ScoreInput("Name a prime.", ["7"], principles="")
    assert key(item=bare) == key(item=ScoreInput([Message("user", "Name a prime.")], ["7"], principles=None))
    int_one, float_one = (dataclasses.replace(SAMPLING, top_p=one) for one in (1, 1.0))
    assert key(sampling=int_one) == key(sampling=float_one)
    assert key(aggregation=AggregationOptions("meta_voting", 2)) == key()


@pytest.mark.parametrize("field", ["model_id", "revision", "template_version"])
def test_each_identity_field_changes_the_key(field):
    assert key({**IDENTITY, field: IDENTITY[field] + "x"}) != key()


@pytest.mark.parametrize("identity,error,match", [
    ({**IDENTITY, "item": "x"}, ValueError, "identity must not use the names \\['item'\\]"),
    ({**IDENTITY, "revision": None}, TypeError, "identity values must be strings"),
])
def test_key_rejects_an_identity_that_could_alias_the_request(identity, error, match):
    with pytest.raises(error, match=match):
        key(identity)


def test_each_record_field_changes_the_key():
    assert set(SAMPLING_CHANGES) == {f.name for f in dataclasses.fields(SamplingOptions)}
    assert set(AGG_CHANGES) == {f.name for f in dataclasses.fields(AggregationOptions)}
    covered = {name.split(":")[0] for name in ITEM_CHANGES}
    assert covered == {f.name for f in dataclasses.fields(ScoreInput)}
    keys = [key()]
    keys += [key(sampling=dataclasses.replace(SAMPLING, **{f: v})) for f, v in SAMPLING_CHANGES.items()]
    keys += [key(aggregation=dataclasses.replace(AGG, **{f: v})) for f, v in AGG_CHANGES.items()]
    keys += [key(item=item) for item in ITEM_CHANGES.values()]
    assert len(set(keys)) == len(keys)  # every single change gives a key of its own


# ---------------------------------------------------------------------------- envelope

def test_envelope_round_trip_and_rejects():
    payload = bytes(range(256)) * 3
    blob = seal("k1", payload)
    assert len(blob) == len(payload) + 10 and unseal("k1", blob) == payload
    assert unseal("k1", seal("k1", b"")) == b""
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    for bad in (bytes(flipped), blob[:-1], blob[:5], b"", b"not ours at all", payload):
        assert unseal("k1", bad) is None
    assert unseal("k2", blob) is None  # a valid value under the wrong key


# ---------------------------------------------------------------------------- both caches

@pytest.fixture(params=["memory", "redis"])
def make_cache(request):
    """A factory (call it inside the test's event loop) for each implementation."""
    if request.param == "memory":
        return lambda **kw: MemoryCache(**kw)
    server = request.getfixturevalue("redis_server")
    return lambda **kw: RedisCache(server.url, **{"timeout_s": CALM, **kw})


def test_hit_returns_exactly_the_stored_bytes(make_cache):
    values = {"a": b"", "b": bytes(range(256)), "c": b"\x00" * 100_000, "d": "é".encode()}

    async def main():
        cache = make_cache()
        assert await cache.get_many([]) == [] and await cache.set_many([]) is None
        assert await cache.get_many(["a", "b"]) == [None, None]
        await cache.set_many(list(values.items()))
        got = await cache.get_many(["d", "missing", "a", "b", "c", "b"])
        assert got == [values["d"], None, values["a"], values["b"], values["c"], values["b"]]
        await cache.set_many([("a", b"new")])
        assert await cache.get_many(["a"]) == [b"new"]
        stats = cache.stats()
        assert (stats["hits"], stats["misses"], stats["writes"], stats["errors"]) == (6, 3, 5, 0)
        assert cache.state() == "ok" and await cache.check() == "ok"
        await cache.close()
        assert cache.state() == "off"
        assert await cache.get_many(["a"]) == [None]  # closed: misses, never an exception
        await cache.set_many([("a", b"x")])

    asyncio.run(main())


# ---------------------------------------------------------------------------- memory

def test_memory_lru_by_entries():
    async def main():
        cache = MemoryCache(max_entries=3)
        await cache.set_many([("a", b"1"), ("b", b"2"), ("c", b"3")])
        await cache.get_many(["a"])  # a is now the most recently used
        await cache.set_many([("d", b"4")])
        assert await cache.get_many(["a", "b", "c", "d"]) == [b"1", None, b"3", b"4"]
        assert len(cache) == 3 and cache.stats()["evictions"] == 1

    asyncio.run(main())


def test_memory_lru_by_bytes():
    async def main():
        cache = MemoryCache(max_bytes=100)  # size = len(key) + len(value)
        await cache.set_many([("a", b"x" * 39), ("b", b"y" * 39)])
        assert cache.nbytes == 80
        await cache.set_many([("c", b"z" * 39)])  # 120 > 100: the oldest goes
        assert await cache.get_many(["a", "b", "c"]) == [None, b"y" * 39, b"z" * 39]
        await cache.set_many([("b", b"y")])  # overwriting frees the old size
        assert cache.nbytes == 42 and len(cache) == 2
        await cache.set_many([("big", b"w" * 98)])  # 101 bytes: never stored, nothing evicted
        assert await cache.get_many(["big"]) == [None] and len(cache) == 2
        stats = cache.stats()
        assert stats["evictions"] == 1 and stats["dropped"] == 1

    asyncio.run(main())


def test_memory_ttl():
    async def main():
        cache = MemoryCache(ttl_s=0.1)
        await cache.set_many([("a", b"1")])
        assert await cache.get_many(["a"]) == [b"1"]
        await asyncio.sleep(0.15)
        assert await cache.get_many(["a"]) == [None] and len(cache) == 0

    asyncio.run(main())


@pytest.mark.parametrize("kwargs", [dict(max_entries=0), dict(max_bytes=0), dict(ttl_s=0)])
def test_memory_rejects_bad_config(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MemoryCache(**kwargs)


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
