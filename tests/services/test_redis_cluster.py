"""The score cache and the replica lease on a real Redis Cluster (3 masters, 3 replicas):
keys of one input in one slot, batches across slots, and a master killed mid-run.

Each test starts its own 6-process cluster (redis_cluster_fixtures.py, about 2 s) and
stops it. The servers are real gRPC servers on loopback with the tiny model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis.cluster import key_slot

from grm.types import AggregationOptions, SamplingOptions, ScoreInput
from redis_cluster_fixtures import redis_cluster  # noqa: F401  (fixture)
from service_helpers import CONFIG, FAST, QUERY, RESPONSES
from services.cache import DEFAULT_PREFIX, RedisCache, cache_key
from services.client import RetryPolicy, RewardClient
from services.lease import ReplicaLease, lease_key
from services.redis_connect import parse_cluster_url
from services.result_store import judgments_key
from services.server import BackgroundServer

SERVE_CONFIG = dataclasses.replace(CONFIG, metrics_port=None)


def test_cluster_urls_are_parsed_and_bad_ones_named():
    assert parse_cluster_url("redis+cluster://u:p%40ss@10.0.0.1:7000,[::1]:7001/") == (
        [("10.0.0.1", 7000), ("::1", 7001)], "u", "p@ss", False)
    assert parse_cluster_url("rediss+cluster://h:1")[3] is True
    with pytest.raises(ValueError, match="host:port, got 'h'"):
        parse_cluster_url("redis+cluster://h:1,h")
    with pytest.raises(ValueError, match="database 0 only"):
        parse_cluster_url("redis+cluster://h:1/2")


def test_the_keys_of_one_input_share_a_slot(judge):
    aggregation = AggregationOptions()
    key = cache_key(DEFAULT_PREFIX, judge.cache_identity(aggregation), ScoreInput(QUERY, RESPONSES),
                    SamplingOptions(k=2, max_new_tokens=16), aggregation)
    assert key.startswith(DEFAULT_PREFIX + "{") and key.endswith("}")
    assert key_slot(key.encode()) == key_slot(judgments_key(key).encode()) == key_slot(lease_key(key).encode())


def test_a_batch_spanning_slots_is_read_and_written(redis_cluster):
    async def go():
        cache = RedisCache(redis_cluster.url, timeout_s=1.0)
        keys = [f"{DEFAULT_PREFIX}{{{i:064x}}}" for i in range(40)]  # spread over the three masters
        await cache.set_many([(k, k.encode()) for k in keys])
        got = await cache.get_many(keys + ["absent"])
        await cache.close()
        return keys, got, cache
    keys, got, cache = asyncio.run(go())
    assert got == [k.encode() for k in keys] + [None]
    assert cache.stats()["errors"] == 0
    assert len({redis_cluster.master_of(k) for k in keys}) == 3


def test_the_lease_rides_out_a_failover_instead_of_computing_unleased(redis_cluster):
    """SET NX on a slot whose master just died: the call keeps trying until the replica
    is promoted, and then takes the lease (a single-server URL would give up at once)."""
    lease = ReplicaLease(redis_cluster.url, outage_s=20.0)
    key = f"{DEFAULT_PREFIX}{{failover}}"

    async def go():
        await lease.run("warm-up" + key, _value("warm"), _none)  # learn the slot map first
        redis_cluster.kill_master_of(key)
        try:
            return await lease.run(key, _value("computed"), _none)
        finally:
            await lease.close()
    assert asyncio.run(go()) == "computed"
    assert lease.counts == {"computed": 2, "waited": 0, "unleased": 0}


def _value(v):
    async def compute():
        return v
    return compute


async def _none():
    return None


def test_a_master_killed_mid_run_loses_no_request_and_computes_no_input_more_than_twice(
        redis_cluster, judge, local_judge):
    """Two servers share the cluster. 24 inputs, each asked 3 times in a row (by one worker
    of 8, so repeats never overlap their original); the master of a third of the slots is
    SIGKILLed after 8 inputs are done, and its replica takes over."""
    servers = [BackgroundServer(j, "127.0.0.1:0", SERVE_CONFIG,
                                cache_factory=lambda: RedisCache(redis_cluster.url, timeout_s=1.0,
                                                                 backoff_max_s=1.0)).start()
               for j in (judge, local_judge)]
    inputs, asks = 24, 3
    replies: dict[int, list] = {i: [] for i in range(inputs)}
    failed: list[str] = []
    done, killed = threading.Semaphore(0), threading.Event()
    target = ",".join(s.address for s in servers)
    try:
        with RewardClient(target, timeout_s=120, retry=RetryPolicy(max_attempts=1)) as client:
            def ask(i: int) -> None:
                for _ in range(asks):
                    try:
                        replies[i].append(client.score(QUERY, RESPONSES, **{**FAST, "seed": i}))
                    except Exception as e:  # counted and shown: the assertion below wants none
                        failed.append(f"input {i}: {e!r}")
                done.release()

            with ThreadPoolExecutor(8) as pool:
                for i in range(inputs):
                    pool.submit(ask, i)
                for _ in range(8):
                    done.acquire()
                dead = redis_cluster.kill_master_of("any-key")
                killed.set()
            redis_cluster.wait_promoted(dead)
            # A server whose Redis calls failed in the failover skips Redis for up to its
            # breaker's longest pause; past it, the read-back below reaches the healed cluster
            # instead of computing again.
            time.sleep(1.5)
            after = [client.score(QUERY, RESPONSES, **{**FAST, "seed": i}) for i in range(inputs)]
        computed = sum(s.metrics.value("grm_items_total", source="computed") for s in servers)
        unleased = sum(s.metrics.value("grm_replica_leases_total", outcome="unleased") for s in servers)
    finally:
        for s in servers:
            s.stop()
    assert killed.is_set() and failed == []
    runs = {i: sum(not r.from_cache for r in rs) for i, rs in replies.items()}
    assert computed == sum(runs.values()) and max(runs.values()) <= 2, (computed, runs, unleased)
    assert all(r.result.vote_sums == rs[0].result.vote_sums for i, rs in replies.items() for r in rs + [after[i]])
    # Every acknowledged result is in the cluster once it has healed: read back, not recomputed.
    assert all(r.from_cache for r in after), [i for i, r in enumerate(after) if not r.from_cache]
