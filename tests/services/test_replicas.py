"""Replicas sharing one Redis: the work lease (services/lease.py) and the multi-target client
(services/targets.py), with a real Redis, real gRPC servers and real clients."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from redis_fixtures import redis_server  # noqa: F401  (fixture)
from service_helpers import CONFIG, FAST, QUERY, RESPONSES
from policy.adapters import trl_reward
from policy.adapters.verl_reward import verl_compute_score
from services.cache import RedisCache
from services.client import RetryPolicy, RewardClient
from services.lease import ReplicaLease, lease_key
from services.scheduler import Deadline, DeadlineExpired
from services.server import BackgroundServer
from services.targets import balanced_target


def run_both(*coros):
    async def main():
        return await asyncio.gather(*coros)
    return asyncio.run(main())


def test_two_holders_of_one_key_compute_once(redis_server):
    calls = []
    store = redis_server.client()

    def replica(name: str):
        lease = ReplicaLease(redis_server.url, owner=name, poll_s=0.01)

        async def compute():
            calls.append(name)
            await asyncio.sleep(0.3)  # long enough for the other to find the lease taken
            store.set("result", f"by {name}")
            return f"by {name}"

        async def read():
            value = store.get("result")
            return value.decode() if value else None

        async def go():
            try:
                return await lease.run("k1", compute, read, Deadline.within(10)), lease.counts
            finally:
                await lease.close()
        return go()

    (a, counts_a), (b, counts_b) = run_both(replica("A"), replica("B"))
    assert len(calls) == 1 and a == b == f"by {calls[0]}"
    assert sorted([counts_a["computed"], counts_b["computed"]]) == [0, 1]
    assert counts_a["waited"] + counts_b["waited"] == 1
    assert store.get(lease_key("k1")) is None  # released by its holder


def test_a_dead_holders_lease_expires_and_another_replica_computes(redis_server):
    store = redis_server.client()
    store.set(lease_key("k2"), "dead-replica", px=600)  # held by a replica that was SIGKILLed
    lease = ReplicaLease(redis_server.url, poll_s=0.01)
    start = time.monotonic()

    async def compute():
        return "computed here"

    async def read():
        return None

    async def go():
        try:
            return await lease.run("k2", compute, read, Deadline.within(10))
        finally:
            await lease.close()
    assert asyncio.run(go()) == "computed here"
    assert time.monotonic() - start >= 0.4  # it waited for the expiry, not less
    assert lease.counts == {"computed": 1, "waited": 0, "unleased": 0}


def test_a_waiter_gets_deadline_exceeded_while_a_holder_computes(redis_server):
    redis_server.client().set(lease_key("k3"), "busy-replica", px=5000)
    lease = ReplicaLease(redis_server.url, poll_s=0.01)

    async def never():
        raise AssertionError("the lease is held elsewhere: this replica must not compute")

    async def nothing():
        return None

    async def go():
        try:
            await lease.run("k3", never, nothing, Deadline.within(0.3))
        finally:
            await lease.close()
    with pytest.raises(DeadlineExpired, match="busy-replica"):
        asyncio.run(go())


def test_a_dead_redis_never_fails_the_request():
    lease = ReplicaLease("redis://127.0.0.1:1/0", timeout_s=0.2)

    async def compute():
        return "computed without a lease"

    async def go():
        try:
            return await lease.run("k4", compute, compute, Deadline.within(5))
        finally:
            await lease.close()
    assert asyncio.run(go()) == "computed without a lease"
    assert lease.counts["unleased"] == 1


@pytest.fixture
def two_replicas(judge, local_judge, redis_server):
    """Two servers, each with its own judge (same weights), sharing one Redis."""
    servers = [BackgroundServer(j, "127.0.0.1:0", CONFIG, cache_factory=lambda: RedisCache(redis_server.url)).start()
               for j in (judge, local_judge)]
    yield servers
    for s in servers:
        s.stop()


def test_identical_requests_on_two_replicas_run_the_engine_once(two_replicas):
    barrier = threading.Barrier(2)

    def call(server):
        with RewardClient(server.address, timeout_s=60) as client:
            barrier.wait()
            return client.score(QUERY, RESPONSES, **FAST)
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(call, two_replicas))
    computed = [s.metrics.value("grm_items_total", source="computed") for s in two_replicas]
    assert sum(computed) == 1, computed
    assert replies[0].result.vote_sums == replies[1].result.vote_sums
    outcomes = {o: sum(s.metrics.value("grm_replica_leases_total", outcome=o) for s in two_replicas)
                for o in ("computed", "waited")}
    cache_hits = sum(s.metrics.value("grm_items_total", source="cache") for s in two_replicas)
    # The second replica either waited on the lease or, arriving after the result landed, hit the cache.
    assert outcomes["computed"] == 1 and outcomes["waited"] + cache_hits == 1, (outcomes, cache_hits)


def test_multi_target_channel_options():
    target, options = balanced_target("127.0.0.1:1,localhost:2")
    assert target == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert dict(options)["grpc.enable_retries"] == 1 and "round_robin" in dict(options)["grpc.service_config"]
    assert balanced_target("127.0.0.1:1") == ("127.0.0.1:1", [])
    with pytest.raises(ValueError, match="host:port"):
        balanced_target("127.0.0.1:1,nonsense")


def requests_on(server) -> float:
    return sum(server.metrics.value("grm_requests_total", method="Score", code=c) for c in ("OK", "UNAVAILABLE"))


def test_the_client_spreads_over_replicas_skips_unready_ones_and_survives_one_stopping(judge, local_judge):
    gate = threading.Event()

    def slow_loader():
        gate.wait(60)
        return judge

    a = BackgroundServer(judge, "127.0.0.1:0", CONFIG).start()
    b = BackgroundServer(local_judge, "127.0.0.1:0", CONFIG).start()
    loading = BackgroundServer(slow_loader, "127.0.0.1:0", CONFIG).start(wait_ready=False)
    try:
        target = f"{a.address},{b.address},{loading.address}"
        with RewardClient(target, timeout_s=60, retry=RetryPolicy(max_attempts=1)) as client:
            for seed in range(8):
                client.score(QUERY, RESPONSES, **{**FAST, "seed": seed}, cache_policy="bypass")
            assert requests_on(a) > 0 and requests_on(b) > 0, (requests_on(a), requests_on(b))
            assert requests_on(loading) == 0  # health NOT_SERVING: round robin leaves it out
        # The adapters take the same multi-address targets.
        def batches() -> float:
            return sum(s.metrics.value("grm_requests_total", method="ScoreBatch", code="OK") for s in (a, b))

        before = batches()
        reward = trl_reward(target, timeout_s=60, cache_policy="bypass", **FAST)
        assert len(reward(prompts=[QUERY] * 2, completions=RESPONSES)) == 2
        verl = verl_compute_score("test", RESPONSES[0], None, {"prompt": QUERY}, target=target,
                                  cache_policy="bypass", on_unscored=-1.0, **FAST)
        assert verl["scored"] in (True, False) and batches() == before + 2  # one ScoreBatch each
        with RewardClient(target, timeout_s=60, retry=RetryPolicy(max_attempts=1)) as client:
            a.stop()
            a = None
            for seed in range(8, 12):  # a's calls go to b; none fails at the client
                client.score(QUERY, RESPONSES, **{**FAST, "seed": seed}, cache_policy="bypass")
    finally:
        gate.set()
        for s in (a, b, loading):
            if s is not None:
                s.stop()


def test_a_single_dead_target_is_still_unavailable():
    with RewardClient("127.0.0.1:1,127.0.0.1:2", timeout_s=2, retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(grpc.RpcError) as e:
            client.score(QUERY, RESPONSES, **FAST)
    assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_the_holder_writes_its_result_when_the_cache_dropped_it(redis_server):
    from services.proto.grm.v1 import reward_pb2 as pb

    msg = pb.ScoreResult(num_valid=2)
    lease = ReplicaLease(redis_server.url, result_ttl_s=60)

    async def go():
        try:
            missing = await lease.read_result("grm:test:key")
            await lease.keep_result("grm:test:key", msg)  # nothing there yet: written here
            return missing, await lease.read_result("grm:test:key")
        finally:
            await lease.close()
    missing, found = asyncio.run(go())
    assert missing is None and found.num_valid == 2 and found.from_cache
    assert 0 < redis_server.client().ttl("grm:test:key") <= 60
