"""Identical work on different replicas runs once: a lease in the Redis the replicas share.

``Singleflight`` (services/singleflight.py) joins identical inputs inside one process.
Replicas behind a load balancer see the same input arrive at two of them at once; both
miss the cache, and without this both would run the engine. ``ReplicaLease.run(key, ...)``
asks Redis for ``key + ":lease"`` with ``SET NX PX``:

- the replica that gets it reads ``read()`` once more (the previous holder may have stored
  its result and released the lease just after this replica's cache miss), then runs
  ``compute()`` (which stores the result in the shared cache before returning), renewing
  the lease every third of its lifetime, and deletes it
  after; only its own lease (compare-and-delete in one Lua call, so a lease that expired
  and went to another replica is never deleted by the old holder);
- the others poll ``read()`` (the shared cache) until the result lands, backing off from
  ``poll_s`` to ``max_poll_s``. If the lease disappears without a result (its holder failed
  or was cancelled) they try to take it themselves; if the holder died (SIGKILL), its
  lease expires after ``ttl_s`` and the same happens;
- Redis trouble never fails a request: the replica computes without a lease (counted as
  ``unleased``), as a cache miss would. On a Redis Cluster (a ``redis+cluster://`` URL)
  each call first keeps trying for ``outage_s`` (5 s by default): long enough to ride out a
  master's failover (``cluster-node-timeout`` plus the election) rather than compute
  during it, so an input is computed at most twice across a failover (twice only when
  the master died before its replica had the lease or the result: replication is
  asynchronous).

The server passes ``read_result`` and ``keep_result`` as ``read`` and ``keep``: they use the
lease's own connection (1 s timeout), not the cache's (50 ms, with a breaker), so a slow
Redis turns into waiting rather than into computing an input twice.

Outcomes are counted in ``counts`` and in ``grm_replica_leases_total{outcome}``:
``computed`` (held the lease and ran the engine), ``waited`` (read another replica's
result), ``unleased`` (Redis did not answer: computed without a lease).

Example (inside a coroutine)::

    lease = ReplicaLease("redis://10.0.0.5:6379/0")
    result = await lease.run(key, compute=lambda: run_engine_and_store(),
                             read=lambda: read_from_cache(), deadline=Deadline.within(30))
    await lease.close()
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import Awaitable, Callable, TypeVar

from redis.exceptions import RedisError

from services.cache import seal, unseal
from services.redis_connect import is_cluster_url, mget, redis_client
from services.proto.grm.v1 import reward_pb2 as pb
from services.result_store import judgments_key, read_result, result_entries
from services.scheduler import Deadline, DeadlineExpired

log = logging.getLogger(__name__)
T = TypeVar("T")
CLUSTER_OUTAGE_S = 5.0  # how long calls to a Redis Cluster keep trying through a failover

# KEYS[1] the lease, ARGV[1] the owner: act only on a lease this replica still holds.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def lease_key(key: str) -> str:
    return key + ":lease"


class ReplicaLease:
    """See the module docstring."""

    def __init__(self, url: str, *, ttl_s: float = 10.0, poll_s: float = 0.02, max_poll_s: float = 0.25,
                 timeout_s: float = 1.0, owner: str | None = None, metrics=None, result_ttl_s: int | None = 86_400,
                 outage_s: float | None = None):
        if outage_s is None:
            outage_s = CLUSTER_OUTAGE_S if is_cluster_url(url) else 0.0
        if not ttl_s > 0 or not 0 < poll_s <= max_poll_s or not timeout_s > 0 or outage_s < 0:
            raise ValueError("ReplicaLease needs ttl_s > 0, 0 < poll_s <= max_poll_s, timeout_s > 0 and "
                             f"outage_s >= 0, got ttl_s={ttl_s}, poll_s={poll_s}, max_poll_s={max_poll_s}, "
                             f"timeout_s={timeout_s}, outage_s={outage_s}")
        self.ttl_ms = int(ttl_s * 1000)
        self.poll_s, self.max_poll_s, self.outage_s = poll_s, max_poll_s, outage_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.metrics = metrics  # a services.metrics.ServiceMetrics, or None
        self.result_ttl_s = result_ttl_s  # the cache's entry lifetime, for results written here
        self.counts = {"computed": 0, "waited": 0, "unleased": 0}
        self._redis = redis_client(url, timeout_s=timeout_s)

    async def run(self, key: str, compute: Callable[[], Awaitable[T]], read: Callable[[], Awaitable[T | None]],
                  deadline: Deadline = Deadline(), on_wait: Callable[[], None] | None = None,
                  keep: Callable[[T], Awaitable[None]] | None = None) -> T:
        """``compute()`` here if this replica gets the lease, else another replica's result via ``read()``.
        ``on_wait`` runs once when this replica starts waiting instead of computing; ``keep(result)``
        runs before the lease is released (see ``keep_result``)."""
        name = lease_key(key)
        waited = False
        while True:
            try:
                got = await self._patient(lambda: self._redis.set(name, self.owner, nx=True, px=self.ttl_ms))
            except RedisError as e:
                log.warning("replica lease: Redis did not answer (%s); computing without a lease", e)
                self._count("unleased")
                return await compute()
            if got:
                # The holder before us may have stored its result and released the lease
                # between our cache miss and our SET: read once more before computing.
                landed = await read()
                if landed is not None:
                    await self._release(name)
                    self._count("waited")
                    return landed
                self._count("computed")
                return await self._hold(name, compute, keep)
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            result = await self._wait(name, read, deadline)
            if result is not None:
                self._count("waited")
                return result

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        except Exception as e:  # closing a dead connection is not worth an error
            log.debug("replica lease: close: %r", e)

    async def _hold(self, name: str, compute: Callable[[], Awaitable[T]],
                    keep: Callable[[T], Awaitable[None]] | None) -> T:
        renew = asyncio.get_running_loop().create_task(self._renew(name))
        try:
            result = await compute()
            if keep is not None:
                await keep(result)
            return result
        finally:
            renew.cancel()
            await self._release(name)

    async def _release(self, name: str) -> None:
        try:
            await self._patient(lambda: self._redis.eval(_RELEASE, 1, name, self.owner))
        except RedisError as e:  # it expires on its own
            log.warning("replica lease: release failed (%s); it expires in %d ms", e, self.ttl_ms)

    async def _renew(self, name: str) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                await self._redis.eval(_RENEW, 1, name, self.owner, self.ttl_ms)
            except RedisError as e:
                log.warning("replica lease: renewing failed (%s)", e)

    async def _wait(self, name: str, read: Callable[[], Awaitable[T | None]], deadline: Deadline) -> T | None:
        """Another replica holds the lease: its result once it lands, or None once the lease is gone."""
        delay = self.poll_s
        while True:
            result = await read()
            if result is not None:
                return result
            try:
                holder = await self._patient(lambda: self._redis.get(name))
            except RedisError:
                holder = None  # the next SET finds out whether Redis is there at all
            if holder is None:
                return await read()  # written before the lease was released, or not at all
            if deadline.passed(time.monotonic()):
                raise DeadlineExpired(f"the deadline passed while another replica ({holder.decode(errors='replace')}) "
                                      "was computing this input")
            await asyncio.sleep(delay)
            delay = min(self.max_poll_s, delay * 1.5)

    async def read_result(self, key: str) -> pb.ScoreResult | None:
        """The stored result of ``key`` (services/result_store.py) read on the lease's own connection.

        The cache's reads give up after 50 ms and skip Redis for a while after one failure
        (services/cache.py): a replica that missed that way would compute the input again.
        """
        try:
            blobs = await self._patient(lambda: mget(self._redis, [key, judgments_key(key)]))
        except RedisError:
            return None
        values = {k: unseal(k, b) if b is not None else None for k, b in zip((key, judgments_key(key)), blobs)}
        return read_result(key, values, with_judgments=True)

    async def keep_result(self, key: str, msg: pb.ScoreResult) -> None:
        """Make sure the holder's result is in Redis before its lease goes: the cache drops a
        write when Redis is slow, and the waiters would then compute the input again."""
        entries = result_entries(key, msg)
        try:
            if await self._patient(lambda: self._redis.exists(*(k for k, _ in entries))) == len(entries):
                return

            async def write() -> None:
                pipe = self._redis.pipeline(transaction=False)
                for k, v in entries:
                    pipe.set(k, seal(k, v), ex=self.result_ttl_s)
                await pipe.execute()
            await self._patient(write)
        except RedisError as e:
            log.warning("replica lease: storing the result failed (%s); other replicas may recompute it", e)

    async def _patient(self, op: Callable[[], Awaitable[T]]) -> T:
        """``op()``, tried again with a growing pause while Redis fails, for up to ``outage_s``;
        then the last error is raised."""
        give_up, delay = time.monotonic() + self.outage_s, self.poll_s
        while True:
            try:
                return await op()
            except RedisError:
                if time.monotonic() + delay > give_up:
                    raise
            await asyncio.sleep(delay)
            delay = min(self.max_poll_s, delay * 2)

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        if self.metrics is not None:
            self.metrics.leases.labels(outcome).inc()
