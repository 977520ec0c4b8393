"""The reward service under concurrent load vs the same requests scored one by one in-process.

Takes the GRM that ``grm serve`` uses by default (the bundled trained checkpoint; with
``--random``, or when none is bundled, a random-weight Llama built by grm.testing with
``--hidden``/``--layers``), starts ``grm serve`` on it as a subprocess (a real server on
127.0.0.1:0, cache off), and loads the same checkpoint here. With the same options (k,
max_new_tokens, temperature 0.5, per-request seeds) it times:

  (a) in-process: ``GenerativeRewardModel.score`` on each of the N requests, one after another;
  (b) service: the same N requests sent at once through ``AsyncRewardClient`` (one channel),
      which the server's scheduler micro-batches into shared engine passes.

Every run times (a) then (b) and the script prints the median throughput ratio (a)/(b)
(target >= 3.0 on the 2-core CPU). Both sides use ``--threads`` torch threads (all cores by
default); (a) is also timed with one thread, and the faster of its two times is used. It then times single requests alone, alternating
in-process and service calls, and prints the service's median overhead over an
in-process call (target <= 10%). The load average is printed too: other work on the
machine makes single runs noisy, hence the medians.

Run::

    python benchmarks/bench_service.py                      # bundled GRM, 32 requests, k=4, 5 runs
    python benchmarks/bench_service.py --random --max-new-tokens 128   # a random tiny model
    python benchmarks/bench_service.py --model path/to/ckpt -k 8 --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing
from grm.default_model import PACKAGED  # noqa: E402
from grm.judge import GenerativeRewardModel  # noqa: E402
from grm.testing import build_tiny_model  # noqa: E402
from grm.types import ScoreInput  # noqa: E402
from services.client import AsyncRewardClient, RewardClient  # noqa: E402
from services.testing.serve_process import ServeProcess  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint to serve (default: the bundled GRM)")
    p.add_argument("--random", action="store_true", help="build a random-weight model instead")
    p.add_argument("--hidden", type=int, default=64, help="with --random")
    p.add_argument("--layers", type=int, default=2, help="with --random")
    # All cores on both sides by default, as a deployment would run. During an engine pass
    # the server's gRPC thread and the client are idle, so the pass has the cores. Small
    # in-process batches can run slower on 2 OpenMP threads than on 1, so the in-process
    # side is timed with 1 thread too and keeps its faster time (the stricter baseline).
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch CPU threads, here and in the server")
    p.add_argument("--requests", type=int, default=32, help="concurrent requests per run")
    p.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up")
    p.add_argument("--singles", type=int, default=10, help="single requests timed each way")
    p.add_argument("-k", type=int, default=4, help="judgments per request")
    p.add_argument("--max-new-tokens", type=int, default=320, help="the bundled GRM stops by itself near 120")
    p.add_argument("--max-wait-ms", type=float, default=20.0, help="the server's micro-batching gap")
    p.add_argument("--max-linger-ms", type=float, default=200.0, help="the server's micro-batching cap")
    return p.parse_args()


def make_requests(n: int) -> list[tuple[ScoreInput, int]]:
    """N distinct inputs like the bundled GRM's tasks (2-3 responses each), each with its own seed."""
    return [(ScoreInput(f"Write exactly {i % 7 + 3} words about the number {i}, ending with a question mark.",
                        [f"Is the number {i} fine?", f"{i} {i} {i}.", "WHY IS IT SO?"][: 2 + i % 2]), i)
            for i in range(n)]


def run_in_process(judge: GenerativeRewardModel, requests, opts: dict) -> float:
    start = time.perf_counter()
    for item, seed in requests:
        judge.score(item.conversation, item.responses, seed=seed, **opts)
    return time.perf_counter() - start


async def run_service(client: AsyncRewardClient, requests, opts: dict) -> float:
    start = time.perf_counter()
    replies = await asyncio.gather(*(client.score(item.conversation, item.responses, seed=seed,
                                                  cache_policy="bypass", **opts) for item, seed in requests))
    elapsed = time.perf_counter() - start
    assert len(replies) == len(requests)
    return elapsed


def single_overhead(judge, address: str, opts: dict, n: int) -> tuple[float, float]:
    """Median seconds of one request alone: (in-process, service)."""
    item = ScoreInput("Name a prime number and say why it is prime.", ["7, divisible only by 1 and 7.", "9"])
    local, remote = [], []
    with RewardClient(address) as client:
        client.score(item.conversation, item.responses, cache_policy="bypass", **opts)  # warm the channel
        for seed in range(n):
            start = time.perf_counter()
            judge.score(item.conversation, item.responses, seed=seed, **opts)
            local.append(time.perf_counter() - start)
            start = time.perf_counter()
            client.score(item.conversation, item.responses, seed=seed, cache_policy="bypass", **opts)
            remote.append(time.perf_counter() - start)
    return statistics.median(local), statistics.median(remote)


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    opts = dict(k=args.k, max_new_tokens=args.max_new_tokens, temperature=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or (PACKAGED if (PACKAGED / "config.json").exists() and not args.random
                              else build_tiny_model(Path(tmp) / "grm", hidden=args.hidden, layers=args.layers))
        judge = GenerativeRewardModel.load(str(path))
        print(f"model {path}: {sum(p.numel() for p in judge.engine.model.parameters()) / 1e6:.1f}M parameters; "
              f"{args.requests} requests, k={args.k}, max_new_tokens={args.max_new_tokens}, "
              f"{args.threads} threads; load average {os.getloadavg()[0]:.1f}", flush=True)
        server = ServeProcess(path, "--no-cache", "--metrics-port", "-1", "--threads", str(args.threads),
                              "--max-wait-ms", str(args.max_wait_ms), "--max-linger-ms", str(args.max_linger_ms))
        try:
            with RewardClient(server.address) as c:
                c.wait_ready(timeout_s=300)
            requests = make_requests(args.requests)
            ratios = asyncio.run(_ratio_runs(judge, server.address, requests, opts, args.runs, args.threads))
            local, remote = single_overhead(judge, server.address, opts, args.singles)
        finally:
            assert server.stop() == 0, server.output()
    print(f"median throughput ratio (service, {args.requests} concurrent / in-process, one by one): "
          f"{statistics.median(ratios):.2f}x  (target >= 3.0)")
    print(f"single request: in-process {local * 1000:.1f} ms, service {remote * 1000:.1f} ms, "
          f"overhead {(remote / local - 1) * 100:+.1f}%  (target <= 10%)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)")
    return 0


async def _ratio_runs(judge, address: str, requests, opts: dict, runs: int, threads: int) -> list[float]:
    ratios = []
    async with AsyncRewardClient(address, timeout_s=600) as client:
        run_in_process(judge, requests[:2], opts)  # warm-up both ways
        await run_service(client, requests[:2], opts)
        for run in range(1, runs + 1):
            local = {}
            for n in sorted({threads, 1}, reverse=True):
                torch.set_num_threads(n)
                local[n] = run_in_process(judge, requests, opts)
            torch.set_num_threads(threads)
            best = min(local.values())
            remote = await run_service(client, requests, opts)
            ratios.append(best / remote)
            timings = ", ".join(f"{t:.2f} s at {n} thread{'s' * (n > 1)}" for n, t in local.items())
            print(f"run {run}: in-process {timings} (best {len(requests) / best:.1f} req/s), service "
                  f"{remote:.2f} s ({len(requests) / remote:.1f} req/s), ratio {best / remote:.2f}x", flush=True)
    return ratios


if __name__ == "__main__":
    sys.exit(main())
