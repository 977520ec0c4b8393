"""Serve replicas on Ray, one replica's actor killed midway: nothing lost, nothing computed twice.

Starts a local Ray (``--cpus``, loopback), a private Redis (one server, or with ``--redis
cluster`` a 3-master, 3-replica Redis Cluster), and the reward service as a Ray Serve
application of ``--replicas`` replicas (services/ray_serve.py; bundled GRM, in-process
engine, one torch thread each). Sends ``--requests`` Score calls through the Serve handle
(services/serve_client.py), ``--repeat`` of them (a quarter by default) repeating an
earlier request, at most ``--concurrency`` at a time. When half of them have been
answered, one replica's actor is killed with ``ray.kill``; with ``--kill-master`` the
Redis master of a third of the slots is SIGKILLed too, at three quarters. It prints:

- failed requests at the client (goal 0);
- engine runs, ``grm_items_total{source="computed"}`` summed over every replica process,
  the killed one included (the replicas write their counters to files), against the
  distinct requests (goal: equal, each computed once; across a Redis failover at most twice;
  a replica killed after a pass but before storing its results leaves those to run again);
- the repeats answered from the cache (a repeat sent while its original was still being
  computed joins that computation instead).

Run::

    python benchmarks/ray_replicas.py                            # 2 replicas, 200 requests, 50 repeats
    python benchmarks/ray_replicas.py --redis cluster --kill-master
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ray
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from ray import serve

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing
sys.path.append(str(Path(__file__).absolute().parent))
from grm.default_model import PACKAGED  # noqa: E402
from grm.judge import GenerativeRewardModel  # noqa: E402
from grm.tasks.generate import generate_tasks  # noqa: E402
from replicas import add_load_args, plan  # noqa: E402
from services.ray_serve import ReplicaSettings, ServeSettings, live_replicas, reward_app  # noqa: E402
from services.serve_client import ServeRewardClient  # noqa: E402
from services.server import ServerConfig  # noqa: E402
from services.testing.redis_servers import RedisClusterServers, RedisServer  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=2)
    add_load_args(p)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--redis", choices=("single", "cluster"), default="single")
    p.add_argument("--kill-master", action="store_true", help="with --redis cluster: kill a master too")
    return p.parse_args()


def engine_runs(folder: str) -> float:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)
    return registry.get_sample_value("grm_items_total", {"source": "computed"}) or 0.0


def wait_for(answers: threading.Semaphore, n: int) -> None:
    for _ in range(n):
        answers.acquire()


def main() -> None:
    args = parse_args()
    if args.kill_master and args.redis != "cluster":
        raise SystemExit("--kill-master needs --redis cluster")
    counters = tempfile.mkdtemp(prefix="grm-ray-counters-")
    with RedisClusterServers() if args.redis == "cluster" else RedisServer() as redis:
        ray.init(num_cpus=args.cpus, include_dashboard=False, object_store_memory=200 * 2**20,
                 _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
        try:
            settings = ServeSettings(ReplicaSettings(redis_url=redis.url, torch_threads=1),
                                     num_replicas=args.replicas, replica_cpus=args.cpus / (args.replicas + 1),
                                     env={"PROMETHEUS_MULTIPROC_DIR": counters})
            start = time.perf_counter()
            loader = functools.partial(GenerativeRewardModel.load, str(PACKAGED))
            handle = serve.run(reward_app(loader, ServerConfig(), settings), name="grm-bench", route_prefix=None)
            victim = sorted(live_replicas(handle, args.replicas))[0]
            print(f"{args.replicas} replicas serving after {time.perf_counter() - start:.1f} s")
            measure(args, handle, victim, redis, counters)
        finally:
            serve.shutdown()
            ray.shutdown()


def measure(args: argparse.Namespace, handle, victim: str, redis, counters: str) -> None:
    """The request stream through the handle, the kills midway, then the report."""
    order = plan(args)
    tasks = generate_tasks(max(order) + 1, seed=5, split="test")
    client = ServeRewardClient(handle, timeout_s=300)
    answers: dict[int, object] = {}
    done = threading.Semaphore(0)

    def call(i: int) -> None:
        t = tasks[order[i]]
        try:
            answers[i] = client.score(t.query, list(t.responses), k=args.k, max_new_tokens=args.max_new_tokens,
                                      seed=order[i])
        except Exception as e:  # reported below; the goal is none
            answers[i] = f"{type(e).__name__}: {e}"
        done.release()

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        pool.map(call, range(args.requests))  # all submitted now
        wait_for(done, args.requests // 2)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        print(f"killed replica {victim} (ray.kill) after {args.requests // 2} answers, "
              f"{time.perf_counter() - start:.1f} s in")
        if args.kill_master:
            wait_for(done, args.requests // 4)
            port = redis.kill_master_of("any-key")
            print(f"killed the Redis master on port {port} (SIGKILL) after {3 * args.requests // 4} answers")
    elapsed = time.perf_counter() - start
    report(args, order, answers, engine_runs(counters), elapsed, client.waits)


def report(args: argparse.Namespace, order: list[int], answers: dict, runs: float, elapsed: float,
           retries: int) -> None:
    distinct = max(order) + 1
    failed = [a for a in answers.values() if isinstance(a, str)]
    repeats = [i for i in range(args.requests) if order.index(order[i]) != i]
    from_cache = sum(1 for i in repeats if not isinstance(answers[i], str) and answers[i].from_cache)
    print(f"{args.replicas} Serve replicas, Redis {args.redis}; {args.requests} requests ({distinct} distinct, "
          f"{len(repeats)} repeats) through the handle, {args.concurrency} at a time, k={args.k}, in {elapsed:.1f} s")
    print(f"failed at the client: {len(failed)}" + (f" {failed[:3]}" if failed else "")
          + f"; calls retried after UNAVAILABLE: {retries}")
    print(f"engine runs (grm_items_total computed, every replica process): {runs:.0f} for {distinct} distinct inputs")
    print(f"repeats answered from the cache: {from_cache} of {len(repeats)} "
          f"(the others joined their original while it was computed)")


if __name__ == "__main__":
    main()
