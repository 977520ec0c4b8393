"""services/cache.py: exact keys, and the properties both caches share (the memory one and
Redis, a real ``redis-server``); Redis faults are in test_cache_redis.py. Each test drives
its coroutine with ``asyncio.run``, building the cache inside that loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time

import pytest
from redis_fixtures import redis_server  # noqa: F401  (fixture)

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
