"""Memory of request recording: RSS after 1,000 and after 5,000 scored requests, N = 1,000.

The inspector keeps the last N scored inputs with their judgments (``grm serve --record N``).
This runs a real server in this process (a tiny random-weight Llama built here, so that
each judgment is long random text, k = 4, up to 128 tokens each) with an in-memory cache,
scores ``--distinct`` different inputs once, then sends Score calls cycling over them
until ``--requests`` have been answered. Cache hits are recorded like any other call,
each as a fresh copy with its judgments, so the ring fills with full records. It prints
the RSS after 1,000 requests, after all of them, and the difference, for recording on
and, in the same run, recording off.

    python benchmarks/bench_inspector_memory.py                 # 5,000 requests, N = 1,000
    python benchmarks/bench_inspector_memory.py --requests 20000
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

from grm.judge import GenerativeRewardModel
from grm.testing import build_tiny_model
from grm_cli.common import set_threads
from services.cache import MemoryCache
from services.client import RewardClient
from services.server import BackgroundServer, ServerConfig

OPTIONS = dict(k=4, temperature=1.0, max_new_tokens=128, seed=0)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def run(judge: GenerativeRewardModel, record: int, requests: int, distinct: int) -> tuple[float, float, int]:
    """(RSS after 1,000 requests, RSS after all, records kept) for one server."""
    inputs = [(f"Question {i}: name {i % 7 + 2} fruits, separated by commas.",
               [f"apple, pear {i} " * 20, f"plum, fig {i} " * 20]) for i in range(distinct)]
    with BackgroundServer(judge, config=ServerConfig(record=record), cache_factory=MemoryCache) as bg, \
            RewardClient(bg.address, timeout_s=600) as client:
        at_1000 = 0.0
        for n in range(requests):
            query, responses = inputs[n % distinct]
            client.score(query, responses, **OPTIONS)
            if n + 1 == 1000:
                gc.collect()
                at_1000 = rss_mib()
        gc.collect()
        recorder = bg.server.servicer.recorder
        return at_1000, rss_mib(), len(recorder) if recorder is not None else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--record", type=int, default=1000)
    p.add_argument("--distinct", type=int, default=100, help="different inputs, each computed once")
    args = p.parse_args()
    if args.requests < 1000:
        raise SystemExit("--requests must be >= 1000 (the first reading is taken at 1,000)")
    set_threads(0)
    with tempfile.TemporaryDirectory() as tmp:
        judge = GenerativeRewardModel.load(str(build_tiny_model(Path(tmp) / "tiny-llama", arch="llama")))
        for label, record in (("recording on", args.record), ("recording off", 0)):
            at_1000, at_end, kept = run(judge, record, args.requests, args.distinct)
            print(f"{label:14s} N={record:<5d} RSS after 1,000: {at_1000:7.1f} MiB  after {args.requests:,}: "
                  f"{at_end:7.1f} MiB  growth: {at_end - at_1000:+6.1f} MiB  records kept: {kept}", flush=True)


if __name__ == "__main__":
    main()
