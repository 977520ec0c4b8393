"""Score-cache hits vs misses through the real service: gRPC over loopback, Redis on a free port.

Starts its own ``redis-server`` (a free port, no persistence) and an in-process reward
server (127.0.0.1:0) on the model ``grm serve`` uses by default
(``grm.default_model.default_model_path()``) with a ``RedisCache`` on that Redis. Then,
with ``RewardClient`` and the default sampling options (k=8, ``--max-new-tokens`` new tokens):

  miss:  ``--misses`` distinct requests (each a new conversation, cache policy USE), so every
         one goes lookup -> engine -> write;
  hit:   one of them repeated ``--hits`` times (after a short warm-up), all read from Redis,
         as the misses asked: without judgments;
  hit+j: the same with ``return_judgments=True`` (reads the judgments entry too);
  floor: a gRPC health check on the same server, over a channel of its own: the cost of
         a trivial unary call here, which no cache can go below.

The three kinds run interleaved in blocks of 50 calls, so a burst of load on the machine
hits them alike. Times are client-side wall times per call. Prints p50/p99 of each, the
miss median, and the ratio miss_median / hit_p50, with the targets (hit p50 <= 2 ms,
ratio >= 50).

Run::

    python benchmarks/bench_cache.py
    python benchmarks/bench_cache.py --misses 5 --hits 500 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grm.default_model import default_model_path
from grm.judge import GenerativeRewardModel
from grm.types import SamplingOptions
from grm_cli.common import set_threads
from services.cache import RedisCache
from services.client import RetryPolicy, RewardClient
from services.convert import SERVICE_NAME
from services.server import BackgroundServer, ServerConfig
from services.testing.redis_servers import RedisServer
from services.validation import Limits

HIT_P50_TARGET_MS = 2.0
RATIO_TARGET = 50.0
RESPONSES = ["The answer is 7, a prime.", "The answer is 9, which is prime."]
BLOCK = 50  # calls of one kind in a row


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between order statistics."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1000, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--misses", type=int, default=3, help="distinct requests timed as misses")
    ap.add_argument("--hits", type=int, default=1000, help="timed calls of each kind: hit, hit+j, floor")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = CPUs - 1, as grm serve")
    args = ap.parse_args()

    set_threads(args.threads)
    path = default_model_path()
    judge = GenerativeRewardModel.load(str(path))
    defaults = SamplingOptions(max_new_tokens=args.max_new_tokens)  # k and the rest: the defaults
    config = ServerConfig(limits=Limits(max_new_tokens=max(args.max_new_tokens, Limits().max_new_tokens)),
                          defaults=defaults)
    print(f"model: {path} (revision {judge.revision[:12]}), k={defaults.k}, "
          f"max_new_tokens={defaults.max_new_tokens}, cpus={os.cpu_count()}, load={os.getloadavg()[0]:.2f}")

    with RedisServer() as redis_server:
        bg = BackgroundServer(judge, "127.0.0.1:0", config,
                              cache_factory=lambda: RedisCache(redis_server.url, timeout_s=0.5)).start()
        try:
            with RewardClient(bg.address, timeout_s=600, retry=RetryPolicy(max_attempts=1)) as client:
                print(f"server {bg.address}, redis {redis_server.url}, cache {client.info().cache_backend}")
                miss_ms = []
                for i in range(args.misses):
                    ms, reply = timed(lambda i=i: client.score(f"Request {i}: name a prime number.", RESPONSES))
                    assert not reply.from_cache, "a miss came from the cache"
                    miss_ms.append(ms)
                    print(f"  miss {i}: {ms:.1f} ms ({reply.result.completion_tokens} completion tokens)")

                query = "Request 0: name a prime number."
                health = grpc.insecure_channel(bg.address)
                check = health_pb2_grpc.HealthStub(health).Check
                calls = {
                    "hit": lambda: client.score(query, RESPONSES),
                    "hit+j": lambda: client.score(query, RESPONSES, return_judgments=True),
                    "floor": lambda: check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=60),
                }
                for call in calls.values():  # warm-up: connections, caches, allocator
                    for _ in range(20):
                        call()
                times: dict[str, list[float]] = {name: [] for name in calls}
                for block in range(0, args.hits, BLOCK):
                    for name, call in calls.items():
                        for _ in range(min(BLOCK, args.hits - block)):
                            ms, reply = timed(call)
                            if name != "floor":
                                assert reply.from_cache, "a repeat was not served from the cache"
                                assert bool(reply.result.judgments) == (name == "hit+j")
                            times[name].append(ms)
                health.close()
                stats = bg.server.cache.stats()
        finally:
            bg.stop()

    hit_p50 = percentile(times["hit"], 50)
    miss_median = statistics.median(miss_ms)
    ratio = miss_median / hit_p50
    print(f"cache stats: {stats}")
    for name, ms in times.items():
        target = (f"   (target <= {HIT_P50_TARGET_MS:g} ms: {'met' if hit_p50 <= HIT_P50_TARGET_MS else 'MISSED'})"
                  if name == "hit" else "")
        print(f"{name:6s} p50: {percentile(ms, 50):.3f} ms   p99: {percentile(ms, 99):.3f} ms{target}   "
              f"[{len(ms)} calls]")
    print(f"miss median: {miss_median:.1f} ms   [{args.misses} calls]")
    print(f"ratio miss_median / hit_p50: {ratio:.1f}x   (target >= {RATIO_TARGET:g}: "
          f"{'met' if ratio >= RATIO_TARGET else 'MISSED'})")
    print(f"load average now: {os.getloadavg()[0]:.2f} (on {os.cpu_count()} cpus)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
