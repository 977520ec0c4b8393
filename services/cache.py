"""Score cache: exact keys, opaque values, and never a point of failure.

Two backends with one interface (``get_many``, ``set_many``, ``state``, ``check``,
``stats``, ``close``): ``MemoryCache`` (an in-process LRU) and ``RedisCache``. A lookup
of a whole batch is one ``get_many`` (one Redis ``MGET``); a write is one ``set_many``
(one pipeline of ``SET key value EX ttl``). Values are bytes this module never looks
inside: ``services/result_store.py`` decides what a stored result looks like.

Backend trouble never raises out of a cache: Redis absent at start, killed mid-run,
too slow for ``timeout_s``, or holding a value we did not write. A lookup becomes a
miss, a write is dropped, the event is counted and logged (one line per kind per
``log_every_s``), and ``state()`` reads "degraded" until Redis answers again; a
circuit breaker keeps a dead Redis from costing anything per request meanwhile.

Example::

    cache = RedisCache(url) if url else MemoryCache()
    keys = [cache_key(DEFAULT_PREFIX, grm.cache_identity(aggregation), item, sampling, aggregation)
            for item in items]
    blobs = await cache.get_many(keys)                 # None where missed
    ...                                                # score the misses
    await cache.set_many([(key, value), ...])
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import sys
import time
from collections import OrderedDict
from enum import Enum
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

from grm.types import AggregationOptions, SamplingOptions, ScoreInput
from services.redis_connect import mget, redis_client

log = logging.getLogger(__name__)
T = TypeVar("T")

# Bump the version (or set another prefix in config) to drop every old entry.
# v2: the server stores a result as two entries (v1 held one).
DEFAULT_PREFIX = "grm:v2:"
STAT_NAMES = ("hits", "misses", "errors", "corrupt", "writes", "dropped", "skipped", "evictions")


# ---------------------------------------------------------------------------- keys

_RECORDS = ("item", "sampling", "aggregation")


def cache_key(prefix: str, identity: Mapping[str, str], item: ScoreInput, sampling: SamplingOptions,
              aggregation: AggregationOptions) -> str:
    """``prefix`` + ``{`` sha256 hex ``}`` of a canonical encoding of everything that decides the result.

    The braces are a Redis Cluster hash tag: the keys derived from this one (its judgments,
    its lease) share its slot, so one input's reads and writes reach one node.

    ``identity`` names the judge (``GenerativeRewardModel.cache_identity``: model id, the
    weights by content, the template). Its entries and every field of the three records
    enter the key, so a field added to either later changes keys instead of being ignored.
    """
    clash = sorted(set(identity) & set(_RECORDS))
    if clash:
        raise ValueError(f"cache_key: identity must not use the names {clash}; they hold the request")
    bad = {name: value for name, value in identity.items() if not isinstance(value, str)}
    if bad:
        raise TypeError(f"cache_key: identity values must be strings, got {bad!r}")
    doc = {**identity, "item": _plain(item), "sampling": _plain(sampling), "aggregation": _plain(aggregation)}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return prefix + "{" + hashlib.sha256(text.encode("ascii")).hexdigest() + "}"


def _plain(value: Any) -> Any:
    """JSON-ready form with one spelling per value: 1 and 1.0 agree, enums are their values."""
    kind = type(value)  # the exact types a request is made of first: this runs on every cache hit
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is tuple or kind is list:
        return [_plain(v) for v in value]
    names = _FIELD_NAMES.get(kind)
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(value))
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)  # json writes other floats with repr: the shortest exact spelling
    if isinstance(value, (str, int, float)):
        return value
    raise TypeError(f"cache_key cannot encode {type(value).__name__}: {value!r}")


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}  # dataclass -> its field names, in declaration order


# ---------------------------------------------------------------------------- envelope
# What we store in Redis:  MAGIC (1 byte) | VERSION (1) | blake2b-64 of key and payload (8) | payload.
# Binding the checksum to the key also catches a valid value copied under the wrong key.

MAGIC, VERSION, HEADER = 0xC5, 1, 10


def seal(key: str, payload: bytes) -> bytes:
    return bytes((MAGIC, VERSION)) + _checksum(key, payload) + payload


def unseal(key: str, blob: bytes) -> bytes | None:
    """The payload, or None when ``blob`` is not a sealed value for ``key`` (corrupt or foreign)."""
    if len(blob) < HEADER or blob[0] != MAGIC or blob[1] != VERSION:
        return None
    payload = blob[HEADER:]
    return payload if _checksum(key, payload) == blob[2:HEADER] else None


def _checksum(key: str, payload: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=8, person=b"grm-cache")
    h.update(key.encode("utf-8") + b"\0")
    h.update(payload)
    return h.digest()


# ---------------------------------------------------------------------------- memory

class MemoryCache:
    """In-process LRU bounded by entries and by bytes (key + value), with an optional TTL.

    The server stores two entries per result; hits without judgments touch only the small
    one, so under pressure a result's judgments go first (asking for them is then a miss).
    """

    name = "memory"

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 256 * 2**20, ttl_s: float | None = None):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0 or None, got {ttl_s}")
        self.max_entries, self.max_bytes, self.ttl_s = max_entries, max_bytes, ttl_s
        # key -> (value, expiry in monotonic seconds; inf without TTL), least recently used first
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._nbytes = 0
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._closed = False

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self._get(key) for key in keys]

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        for key, value in items:
            self._put(key, value)

    def state(self) -> str:
        return "off" if self._closed else "ok"

    async def check(self) -> str:
        return self.state()

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    async def close(self) -> None:
        self._closed = True
        self._data.clear()
        self._nbytes = 0

    def _get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is not None and entry[1] <= time.monotonic():
            self._remove(key)
            entry = None
        if entry is None:
            self._stats["misses"] += 1
            return None
        self._data.move_to_end(key)
        self._stats["hits"] += 1
        return entry[0]

    def _put(self, key: str, value: bytes) -> None:
        value = bytes(value)
        size = len(key) + len(value)
        if self._closed or size > self.max_bytes:
            self._stats["dropped"] += 1
            return
        if key in self._data:
            self._remove(key)
        expiry = time.monotonic() + self.ttl_s if self.ttl_s is not None else math.inf
        self._data[key] = (value, expiry)
        self._nbytes += size
        self._stats["writes"] += 1
        while len(self._data) > self.max_entries or self._nbytes > self.max_bytes:
            self._remove(next(iter(self._data)))  # the least recently used
            self._stats["evictions"] += 1

    def _remove(self, key: str) -> None:
        value, _ = self._data.pop(key)
        self._nbytes -= len(key) + len(value)


# ---------------------------------------------------------------------------- redis

class RedisCache:
    """Redis through ``redis.asyncio`` (hiredis parses replies when installed): one server,
    or a Redis Cluster for a ``redis+cluster://`` URL (services/redis_connect.py).

    Every call is bounded by ``timeout_s``. Inside it redis-py retries a call once, on a
    fresh connection, when the connection fails (never on a timeout): a pooled connection
    can be one Redis closed in a crash or restart, and only its first use finds that out,
    which must not fail the call (nor flip the breaker just as Redis came back). After a
    failure a circuit breaker opens: calls skip Redis for ``backoff_min_s``, doubling per
    consecutive failure up to ``backoff_max_s``; then one call at a time goes through as a
    probe, and the first success closes the breaker ("ok" again). Nothing connects in the
    constructor, so a Redis that is absent at start costs one failed call, not a crash.
    """

    name = "redis"

    def __init__(self, url: str, ttl_s: int | None = 86_400, timeout_s: float = 0.05, *,
                 backoff_min_s: float = 0.5, backoff_max_s: float = 5.0, log_every_s: float = 10.0):
        if ttl_s is not None and (not isinstance(ttl_s, int) or ttl_s < 1):
            raise ValueError(f"ttl_s must be a whole number of seconds >= 1 or None, got {ttl_s!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError(f"need 0 < backoff_min_s <= backoff_max_s, got {backoff_min_s}, {backoff_max_s}")
        self.ttl_s, self.timeout_s = ttl_s, timeout_s
        self.url = url  # replicas sharing this Redis also share work leases (services/lease.py)
        self.backoff_min_s, self.backoff_max_s = backoff_min_s, backoff_max_s
        self._redis = redis_client(url, timeout_s=timeout_s)  # one server or a cluster, by URL
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._log = _RateLimitedLog(log_every_s)
        self._failures = 0  # consecutive failed episodes; 0 means the breaker is closed
        self._retry_at = 0.0  # monotonic time before which calls skip Redis
        self._probing = False
        self._closed = False

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        keys = list(keys)
        if not keys:
            return []
        blobs = await self._call("get", lambda: mget(self._redis, keys))
        if blobs is None:
            self._stats["misses"] += len(keys)
            return [None] * len(keys)
        values = []
        for key, blob in zip(keys, blobs):
            value = None if blob is None else unseal(key, blob)
            if blob is not None and value is None:
                self._stats["corrupt"] += 1
                self._log.warning("corrupt", "redis cache: value under %s is not ours or is corrupt; "
                                  "treated as a miss", key)
            self._stats["hits" if value is not None else "misses"] += 1
            values.append(value)
        return values

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if not items:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key, value in items:
            pipe.set(key, seal(key, value), ex=self.ttl_s)
        done = await self._call("set", pipe.execute)
        self._stats["writes" if done is not None else "dropped"] += len(items)

    def state(self) -> str:
        if self._closed:
            return "off"
        return "degraded" if self._failures else "ok"

    async def check(self) -> str:
        await self._call("ping", self._redis.ping)
        return self.state()

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    async def close(self) -> None:
        self._closed = True
        try:
            await self._redis.aclose()
        except Exception as exc:  # closing a dead connection is not worth an error
            log.debug("redis cache: close: %r", exc)

    async def _call(self, kind: str, op: Callable[[], Awaitable[T]]) -> T | None:
        """``op()`` within ``timeout_s`` through the breaker; None when skipped or failed."""
        now = time.monotonic()
        probe = self._failures > 0
        if self._closed or (probe and (self._probing or now < self._retry_at)):
            self._stats["skipped"] += 1
            return None
        if probe:
            self._probing = True  # the one call that finds out whether Redis is back
        try:
            result = await _within(self.timeout_s, op)
        except Exception as exc:  # any backend trouble; cancellation (BaseException) still propagates
            self._failed(kind, exc)
            return None
        finally:
            if probe:
                self._probing = False
        if self._failures:
            log.warning("redis cache: Redis answers again, caching resumed (after %d failed tries)",
                        self._failures)
            self._failures = 0
        return result

    def _failed(self, kind: str, exc: Exception) -> None:
        self._stats["errors"] += 1
        now = time.monotonic()
        if now >= self._retry_at:  # calls already in flight when the breaker opened do not stretch it
            self._failures += 1
            backoff = min(self.backoff_max_s, self.backoff_min_s * 2 ** (self._failures - 1))
            self._retry_at = now + backoff
        self._log.warning(kind, "redis cache: %s failed (%s: %s); running uncached, next try in %.1f s",
                          kind, type(exc).__name__, exc, max(0.0, self._retry_at - now))


if sys.version_info >= (3, 11):
    async def _within(timeout_s: float, op: Callable[[], Awaitable[T]]) -> T:
        """``await op()``, cancelled after ``timeout_s`` (TimeoutError). Unlike ``wait_for`` before
        Python 3.12 it runs ``op`` in the calling task: no task and no loop turn more per call."""
        async with asyncio.timeout(timeout_s):
            return await op()
else:
    async def _within(timeout_s: float, op: Callable[[], Awaitable[T]]) -> T:
        return await asyncio.wait_for(op(), timeout_s)


class _RateLimitedLog:
    """At most one warning per kind every ``every_s`` seconds; says how many were held back."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, kind: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -math.inf) < self.every_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        log.warning(msg + (f" ({held} similar held back)" if held else ""), *args)
