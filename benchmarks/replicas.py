"""Replicas sharing one Redis, one of them killed midway: nothing lost, nothing computed twice.

Starts a private ``redis-server`` and ``--replicas`` ``grm serve`` processes on it (bundled
GRM, in-process engine, one torch thread each, Prometheus metrics on). Sends ``--requests``
Score calls, of which ``--repeat`` (a quarter by default) repeat an earlier request, at most
``--concurrency`` at a time, through one multi-target channel (``host:port,host:port,...``:
round robin, health checks, retries on UNAVAILABLE; services/targets.py). When half of them
have been answered, one replica is killed with SIGKILL. It prints:

- failed requests at the client (goal 0);
- engine runs, from the replicas' ``grm_items_total{source="computed"}`` (the killed one read
  just before the kill), against the distinct requests (goal: equal, each computed once);
- the repeats answered from the cache, and how many of those by a replica other than the
  one that computed the original (each reply names its replica in ``grm-replica`` metadata).

Run::

    python benchmarks/replicas.py                   # 3 replicas, 200 requests, a quarter repeats
    python benchmarks/replicas.py --replicas 3 --requests 200 --k 2 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing
from grm.default_model import PACKAGED  # noqa: E402
from grm.tasks.generate import generate_tasks  # noqa: E402
from services.client import DEFAULT_MAX_MESSAGE_BYTES, open_channel, score_request  # noqa: E402
from services.proto.grm.v1 import reward_pb2_grpc as pb_grpc  # noqa: E402
from services.servicer import REPLICA_HEADER  # noqa: E402
from services.testing.redis_servers import RedisServer  # noqa: E402
from services.testing.serve_process import ServeProcess  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=3)
    add_load_args(p)
    return p.parse_args()


def add_load_args(p: argparse.ArgumentParser) -> None:
    """The request stream: how many, how many repeats, how many at once, how each is sampled."""
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--repeat", type=float, default=0.25, help="share of requests that repeat an earlier one")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("-k", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)


def plan(args: argparse.Namespace) -> list[int]:
    """Request i asks for distinct input plan[i]; a repeat names an earlier one's."""
    rng = random.Random(args.seed)
    repeats = set(rng.sample(range(1, args.requests), round(args.requests * args.repeat)))
    order, fresh = [], 0
    for i in range(args.requests):
        if i in repeats:
            order.append(rng.choice(order))
        else:
            order.append(fresh)
            fresh += 1
    return order


def metric(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(want + " "))


def main() -> None:
    args = parse_args()
    order = plan(args)
    distinct = max(order) + 1
    tasks = generate_tasks(distinct, seed=5, split="test")
    redis = RedisServer()
    redis.start()
    replicas = [ServeProcess(PACKAGED, "--redis-url", redis.url, "--threads", "1", "--metrics-port", "0")
                for _ in range(args.replicas)]
    try:
        for r in replicas:
            r.wait_for_line("ready:", 300)
        ports = [int(r.wait_for_line("metrics on", 10).rsplit(":", 1)[1].split("/")[0]) for r in replicas]
        target = ",".join(r.address for r in replicas)
        channel = open_channel(target, DEFAULT_MAX_MESSAGE_BYTES, None)
        stub = pb_grpc.RewardServiceStub(channel)
        answers: dict[int, tuple[str, bool] | str] = {}
        done = threading.Semaphore(0)

        def call(i: int) -> None:
            t = tasks[order[i]]
            request = score_request(t.query, list(t.responses), k=args.k, max_new_tokens=args.max_new_tokens,
                                    seed=order[i])
            try:
                reply, info = stub.Score.with_call(request, timeout=300)
                replica = dict(info.trailing_metadata() or ()).get(REPLICA_HEADER, "?")
                answers[i] = (replica, reply.result.from_cache)
            except grpc.RpcError as e:
                answers[i] = f"{e.code().name}: {e.details()}"
            done.release()

        victim, victim_computed = args.replicas - 1, 0.0
        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            for i in range(args.requests):
                pool.submit(call, i)
            for _ in range(args.requests // 2):
                done.acquire()
            victim_computed = metric(ports[victim], "grm_items_total", source="computed")
            replicas[victim].proc.kill()
            print(f"killed replica {victim + 1} (SIGKILL) after {args.requests // 2} answers, "
                  f"{time.perf_counter() - start:.1f} s in")
        elapsed = time.perf_counter() - start
        failed = {i: a for i, a in answers.items() if isinstance(a, str)}
        computed = [metric(p, "grm_items_total", source="computed") for j, p in enumerate(ports) if j != victim]
        total = sum(computed) + victim_computed
        computed_by = {order[i]: a[0] for i, a in sorted(answers.items()) if not isinstance(a, str) and not a[1]}
        repeat_hits = [(i, a) for i, a in answers.items() if not isinstance(a, str) and a[1]
                       and order.index(order[i]) != i]
        elsewhere = sum(a[0] != computed_by.get(order[i]) for i, a in repeat_hits)
        print(f"{args.replicas} replicas, one Redis; {args.requests} requests ({distinct} distinct, "
              f"{args.requests - distinct} repeats), {args.concurrency} at a time, k={args.k}, in {elapsed:.1f} s")
        print(f"failed at the client: {len(failed)}" + (f" {list(failed.values())[:3]}" if failed else ""))
        print(f"engine runs (grm_items_total computed): {total:.0f} for {distinct} distinct inputs "
              f"(survivors {[int(c) for c in computed]}, the killed one {victim_computed:.0f} before the kill)")
        print(f"repeats answered from the cache: {len(repeat_hits)}, by a replica other than the one that "
              f"computed them: {elsewhere}")
        leases = {o: sum(metric(p, "grm_replica_leases_total", outcome=o) for j, p in enumerate(ports) if j != victim)
                  for o in ("computed", "waited", "unleased")}
        print(f"leases on the survivors: {leases}")
    finally:
        for r in replicas:
            if r.proc.poll() is None:
                r.stop()
        redis.stop()


if __name__ == "__main__":
    main()
