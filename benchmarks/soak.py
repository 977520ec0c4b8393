"""Soak: ``grm serve`` driven at twice its measured capacity, Redis killed and restarted in
the middle, then SIGTERM while the load goes on.

1. Starts a private ``redis-server`` and ``grm serve`` (the bundled GRM, Redis cache) as
   subprocesses.
2. Capacity: for ``--probe-s`` seconds it keeps ``--probe-concurrency`` distinct requests in
   flight and counts completions per second. The server is then restarted with
   ``--max-calls-per-caller`` set to what it finishes in a third of a call's deadline, and
   warmed up.
3. Load: for ``--duration-s`` it starts requests at twice that rate, open loop (arrivals do
   not wait for answers): 60% new inputs, 20% repeats of earlier ones (cache hits or
   joins), 20% invalid ones (k = 0, no responses, an unknown role). Halfway, Redis is killed
   with SIGKILL and restarted 5 s later on the same port.
4. SIGTERM with the load still running for a few more seconds; the process must exit 0.

Two hostile additions, each an option:

- ``--stalled-engine``: the server samples on a real ``llama-server`` through two URLs, each
  a proxy in front of it (services/testing/engine_proxy.py); the first proxy stalls one
  completion call in ``--stall-every`` halfway through its reply, so that URL keeps being
  ejected for a stall and re-admitted while the load goes on;
- ``--tcp-flood N``: the server runs with TLS and its HTTP port, under a file limit of
  ``--fd-limit``, and N bare TCP connections that never start a handshake are held open
  against the HTTP port (reopened as the server closes them), from the capacity probe on,
  so the admitted rate is what the server manages under the flood.

Printed: admitted calls' p50/p99 latency; every status by kind of request; RSS after
warm-up and at the end; the server's open file descriptors (after warm-up, at most) and
its log lines; and every failure that is not a deliberate answer. Deliberate: OK;
INVALID_ARGUMENT for the invalid inputs; RESOURCE_EXHAUSTED (refused with a retry hint);
UNAVAILABLE only after SIGTERM, for calls refused before they started.

    python benchmarks/soak.py                       # 10 minutes of load
    python benchmarks/soak.py --duration-s 60       # a short run
    python benchmarks/soak.py --duration-s 120 --stalled-engine --tcp-flood 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing

import grpc
from soak_hazards import ConnectionFlood, Setup, fd_count, stalled_engine, tls_files

from grm.default_model import default_model_path
from services.client import DEFAULT_MAX_MESSAGE_BYTES, AsyncRewardClient, RetryPolicy, open_channel
from services.proto.grm.v1 import reward_pb2 as pb
from services.testing.redis_servers import RedisServer

TOPICS = ["sea", "city", "moon", "river", "garden", "winter", "train", "forest"]
OPTIONS = dict(k=4, max_new_tokens=256, temperature=0.5)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration-s", type=float, default=600.0, help="seconds of load at twice the capacity")
    p.add_argument("--probe-s", type=float, default=40.0, help="seconds to measure the capacity")
    p.add_argument("--probe-concurrency", type=int, default=32)
    p.add_argument("--drain-s", type=float, default=5.0, help="seconds the load continues after SIGTERM")
    p.add_argument("--timeout-s", type=float, default=60.0, help="each call's deadline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stalled-engine", action="store_true",
                   help="sample on llama-server through two URLs, one of which stalls calls halfway")
    p.add_argument("--stall-every", type=int, default=10, help="the stalling URL holds one completion call in N")
    p.add_argument("--tcp-flood", type=int, default=0, metavar="N",
                   help="hold N bare TCP connections against the TLS HTTP port during the load")
    p.add_argument("--fd-limit", type=int, default=1024, help="the server's file limit under --tcp-flood")
    p.add_argument("--log-out", help="keep the server's log (stderr) of the load phase here")
    return p.parse_args()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(redis_url: str, setup: Setup, max_calls: int = 0) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "grm_cli", "serve", "--model", str(default_model_path()), "--port", "0",
           "--redis-url", redis_url, "--metrics-port", "-1", "--grace", "30", "--max-calls-per-caller", str(max_calls),
           # bounded caches fill during the warm-up, so RSS growth after it would be a leak
           "--prefix-cache-mb", "32", *setup.flags]
    with open(setup.log, "w") as log:  # a fresh log per start: its lines are the last server's
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=setup.limit_files)
    address = None
    for line in proc.stdout:
        if line.startswith("serving on "):
            address = line.split()[2]
        if line.startswith("OpenRLHF reward endpoint on "):
            setup.http_port = int(line.rsplit(":", 1)[1].split("/")[0])
        if line.startswith("ready:"):
            break
    if address is None:
        raise RuntimeError(f"grm serve did not start; its log: {Path(setup.log).read_text()[-2000:]}")
    return proc, address


def new_input(rng: random.Random, n: int) -> tuple[str, list[str]]:
    topic = rng.choice(TOPICS)
    words = rng.randint(3, 9)
    query = f"Write exactly {words} words about the {topic}, ending with a question mark. (#{n})"
    return query, [f"Is the {topic} calm tonight?", f"THE {topic.upper()} IS {rng.choice(['BLUE', 'COLD'])}.",
                   f"{topic} {topic} {topic}?"][:rng.choice((2, 3))]


def bad_requests() -> list[bytes]:
    """Requests our client would refuse to build, sent as bytes so the server judges them."""
    def request(conversation=(("user", "q"),), responses=("a", "b"), **sampling) -> bytes:
        return pb.ScoreRequest(input=pb.ScoreInput(conversation=[pb.Message(role=r, content=c) for r, c in conversation],
                                                   responses=list(responses)),
                               sampling=pb.SamplingOptions(**sampling)).SerializeToString()
    return [request(k=0), request(responses=()), request(conversation=(("robot", "x"),)), request(temperature=-1.0),
            b"\xff\xff\xff"]


async def one(client: AsyncRewardClient, kind: str, payload, timeout_s: float, log: list, raw=None) -> None:
    start = time.perf_counter()
    try:
        if kind == "bad":
            await raw(payload, timeout=timeout_s)
        else:
            await client.score(payload["query"], payload["responses"], timeout_s=timeout_s,
                               **{k: v for k, v in payload.items() if k not in ("query", "responses")})
        code = "OK"
    except grpc.RpcError as e:
        code = e.code().name
    log.append((kind, code, time.perf_counter() - start, time.monotonic()))


async def probe(client: AsyncRewardClient, seconds: float, concurrency: int, rng: random.Random) -> float:
    done, end, n = [0], time.monotonic() + seconds, [0]

    async def worker():
        while time.monotonic() < end:
            n[0] += 1
            query, responses = new_input(rng, 10_000_000 + n[0])
            await client.score(query, responses, timeout_s=120, seed=n[0], **OPTIONS)
            done[0] += 1
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done[0] / seconds


async def drive(args, client, rate: float, redis: RedisServer, proc: subprocess.Popen, rng: random.Random,
                address: str, setup: Setup):
    log: list = []
    channel = open_channel(address, DEFAULT_MAX_MESSAGE_BYTES, setup.tls, asynchronous=True)
    raw = channel.unary_unary("/grm.v1.RewardService/Score")
    bad = bad_requests()
    tasks: set[asyncio.Task] = set()
    earlier: list[dict] = []
    start = time.monotonic()
    killed = restarted = False
    sigterm_at = None
    n = 0
    while True:
        now = time.monotonic() - start
        if not killed and now > args.duration_s / 2:
            redis.kill()
            killed, kill_at = True, now
            print(f"[{now:6.1f} s] redis killed", flush=True)
        if killed and not restarted and now > kill_at + 5:
            redis.start()
            restarted = True
            print(f"[{now:6.1f} s] redis restarted", flush=True)
        if sigterm_at is None and now > args.duration_s:
            proc.send_signal(signal.SIGTERM)
            sigterm_at = time.monotonic()
            print(f"[{now:6.1f} s] SIGTERM sent; load continues {args.drain_s:g} s", flush=True)
        if sigterm_at is not None and time.monotonic() > sigterm_at + args.drain_s:
            break
        n += 1
        roll = rng.random()
        if roll < 0.2:
            kind, payload = "bad", rng.choice(bad)
        elif roll < 0.4 and earlier:
            kind, payload = "repeat", rng.choice(earlier)
        else:
            query, responses = new_input(rng, n)
            kind, payload = "new", dict(query=query, responses=responses, seed=n, **OPTIONS)
            earlier.append(payload)
        task = asyncio.create_task(one(client, kind, payload, args.timeout_s, log, raw))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await asyncio.sleep(rng.expovariate(rate))
    await asyncio.gather(*tasks)
    await channel.close()
    return log, sigterm_at


def report(log, sigterm_at: float, rss_start: float, rss_end: float, exit_code: int, capacity: float,
           extra: list[str]) -> int:
    deliberate = {"new": {"OK", "RESOURCE_EXHAUSTED"}, "repeat": {"OK", "RESOURCE_EXHAUSTED"},
                  "bad": {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}}
    counts: dict[tuple[str, str], int] = {}
    failures = []
    for kind, code, seconds, ended in log:
        counts[(kind, code)] = counts.get((kind, code), 0) + 1
        after_sigterm = ended >= sigterm_at
        if code not in deliberate[kind] and not (after_sigterm and code == "UNAVAILABLE"):
            failures.append((kind, code, round(seconds, 2), "after SIGTERM" if after_sigterm else ""))
    admitted = sorted(s for kind, code, s, _ in log if code == "OK")
    print(f"\ncapacity {capacity:.2f} calls/s; offered {len(log)} calls at twice that")
    if admitted:
        p99 = admitted[min(len(admitted) - 1, int(0.99 * len(admitted)))]
        print(f"admitted {len(admitted)}: p50 {statistics.median(admitted):.2f} s, p99 {p99:.2f} s")
    for (kind, code), count in sorted(counts.items()):
        print(f"  {kind:7s} {code:20s} {count}")
    print(f"RSS after warm-up {rss_start:.0f} MB, at the end {rss_end:.0f} MB "
          f"({100 * (rss_end - rss_start) / rss_start:+.1f}%)")
    for line in extra:
        print(line)
    print(f"exit code after SIGTERM: {exit_code}")
    print(f"failures that are not deliberate refusals: {len(failures)}")
    for f in failures[:50]:
        print("  ", f)
    return 0 if not failures and exit_code == 0 else 1


def flood_of(setup: Setup, n: int) -> ConnectionFlood | None:
    return ConnectionFlood(setup.http_port, n).start() if n else None


async def main_async(args) -> int:
    rng = random.Random(args.seed)
    with RedisServer() as redis, tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        setup = Setup(log=str(Path(tmp) / "server.log"))
        if args.stalled_engine:
            stalling = stalled_engine(setup, stack, args.stall_every)
        if args.tcp_flood:
            tls_files(setup, Path(tmp), args.fd_limit)
        proc, address = start_server(redis.url, setup)
        flood = flood_of(setup, args.tcp_flood)  # the capacity is measured under the same flood
        client = AsyncRewardClient(address, retry=RetryPolicy(max_attempts=1, honour_pushback=False), tls=setup.tls)
        capacity = await probe(client, args.probe_s, args.probe_concurrency, rng)
        await client.close()
        if flood is not None:
            flood.stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        # Admit only what the engine can finish within a third of a deadline; the rest is
        # refused at once with a retry hint instead of waiting until its deadline passes.
        max_calls = max(1, int(capacity * args.timeout_s / 3))
        proc, address = start_server(redis.url, setup, max_calls)
        flood = flood_of(setup, args.tcp_flood)
        try:
            client = AsyncRewardClient(address, retry=RetryPolicy(max_attempts=1, honour_pushback=False),
                                       tls=setup.tls)
            await probe(client, min(args.probe_s, 20.0), args.probe_concurrency, rng)  # warm-up
            rss_start, fds_start = rss_mb(proc.pid), fd_count(proc.pid)
            print(f"serving with --max-calls-per-caller {max_calls}", flush=True)
            print(f"capacity {capacity:.2f} calls/s; RSS after warm-up {rss_start:.0f} MB", flush=True)
            last_rss, fds = [rss_start], [fds_start]
            trace: list[tuple[float, float]] = []  # (seconds into the load, RSS MB)
            began = time.monotonic()

            async def watch():
                while proc.poll() is None:
                    last_rss[0] = rss_mb(proc.pid)
                    fds.append(fd_count(proc.pid))
                    trace.append((time.monotonic() - began, last_rss[0]))
                    await asyncio.sleep(1)
            watcher = asyncio.create_task(watch())
            log, sigterm_at = await drive(args, client, 2 * capacity, redis, proc, rng, address, setup)
            exit_code = await asyncio.to_thread(proc.wait, 60)
            watcher.cancel()
            await client.close()
            extra = [f"open file descriptors: {fds_start} after warm-up, at most {max(fds)} during the load",
                     f"server log: {setup.log_lines()} lines, {setup.log_bytes()} bytes"]
            if args.log_out:
                shutil.copyfile(setup.log, args.log_out)
            if flood is not None:
                flood.stop()
                extra.append(f"connection flood on the TLS HTTP port: {flood.describe()}")
            if args.stalled_engine:
                extra.append(f"stalling engine URL: {stalling.stalled} completion calls held halfway, "
                             f"{stalling.closed_by_client} of them cut by the server")
            marks = [trace[min(len(trace) - 1, int(q * len(trace)))] for q in (0.25, 0.5, 0.75)] if trace else []
            print("RSS during the load: " + ", ".join(f"{t:.0f} s {mb:.0f} MB" for t, mb in marks))
            return report(log, sigterm_at, rss_start, last_rss[0], exit_code, capacity, extra)
        finally:
            if flood is not None:
                flood.stop()
            if proc.poll() is None:
                proc.kill()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(asyncio.run(main_async(parse_args())))
