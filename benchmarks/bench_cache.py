"""Score-cache hits vs misses through the real service: gRPC over loopback, Redis on a free port.

Starts its own ``redis-server`` (a free port, no persistence) and an in-process reward
server (127.0.0.1:0) on the model ``grm serve`` uses by default
(``grm.default_model.default_model_path()``) with a ``RedisCache`` on that Redis. Then,
with ``RewardClient`` and the default sampling options (k=8, ``--max-new-tokens`` new tokens):

  miss: ``--misses`` distinct requests (each a new conversation, cache policy USE), so every
        one goes lookup -> engine -> write;
  hit:  one of them repeated ``--hits`` times (after a short warm-up), all read from Redis.

Times are client-side wall times per call. Prints hit p50/p99, the miss median, and the
ratio miss_median / hit_p50, with the targets (hit p50 <= 2 ms, ratio >= 50).

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
sys.path.append(str(Path(__file__).absolute().parents[1] / "tests" / "services"))

from redis_fixtures import RedisServer

from grm.default_model import default_model_path
from grm.judge import GenerativeRewardModel
from grm.types import SamplingOptions
from services.cache import RedisCache
from services.cli import set_threads
from services.client import RetryPolicy, RewardClient
from services.server import BackgroundServer, ServerConfig
from services.validation import Limits

HIT_P50_TARGET_MS = 2.0
RATIO_TARGET = 50.0
RESPONSES = ["The answer is 7, a prime.", "The answer is 9, which is prime."]


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
    ap.add_argument("--hits", type=int, default=200, help="repeats of one request timed as hits")
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
                for _ in range(10):  # warm-up: connection, caches, allocator
                    assert client.score(query, RESPONSES).from_cache
                hit_ms = []
                for _ in range(args.hits):
                    ms, reply = timed(lambda: client.score(query, RESPONSES))
                    assert reply.from_cache, "a repeat was not served from the cache"
                    hit_ms.append(ms)
                stats = bg.server.cache.stats()
        finally:
            bg.stop()

    hit_p50, hit_p99 = percentile(hit_ms, 50), percentile(hit_ms, 99)
    miss_median = statistics.median(miss_ms)
    ratio = miss_median / hit_p50
    print(f"cache stats: {stats}")
    print(f"hit  p50: {hit_p50:.3f} ms   (target <= {HIT_P50_TARGET_MS:g} ms: "
          f"{'met' if hit_p50 <= HIT_P50_TARGET_MS else 'MISSED'})   [{args.hits} calls]")
    print(f"hit  p99: {hit_p99:.3f} ms")
    print(f"miss median: {miss_median:.1f} ms   [{args.misses} calls]")
    print(f"ratio miss_median / hit_p50: {ratio:.1f}x   (target >= {RATIO_TARGET:g}: "
          f"{'met' if ratio >= RATIO_TARGET else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
