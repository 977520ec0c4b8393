"""The network commands of ``grm``: ``serve``, ``demo``, ``info`` and ``score --target``.

``grm/cli.py`` declares the flags and calls these functions lazily, so importing ``grm``
never imports grpc. Progress goes to stderr; results and the parseable
``serving on HOST:PORT`` line go to stdout.

    grm serve                                   # default GRM on 127.0.0.1:50051, in-memory cache
    grm serve --model ckpt --port 0 --redis-url redis://127.0.0.1:6379/0
    grm score --target 127.0.0.1:50051 --query "Name a prime." --response 7 --response 9 --show
    grm info --target 127.0.0.1:50051
    grm demo                                    # serve in-process, score an example, shut down
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from grm.types import SamplingOptions, ScoreInput

DEMO_INPUT = ScoreInput(
    "Write one sentence in uppercase that ends with a question mark and includes the word blue.",
    ["IS THE SKY BLUE TODAY?", "Is the sky blue today?", "THE SKY IS BLUE."])


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _loader(args: argparse.Namespace):
    """A function that loads the judge named by --model/--meta-rm/--template (default: bundled)."""
    def load():
        from grm.default_model import default_meta_rm_path, default_model_path
        from grm.judge import GenerativeRewardModel

        if args.model:
            path, meta = args.model, args.meta_rm
        else:
            _say("locating the default GRM (the bundled one, else one built once into $GRM_HOME) ...")
            path, meta = str(default_model_path()), args.meta_rm or default_meta_rm_path()
        start = time.perf_counter()
        _say(f"loading {path} ...")
        judge = GenerativeRewardModel.load(path, meta_rm=str(meta) if meta else None,
                                           template=args.template, device=args.device)
        _say(f"loaded {path} in {time.perf_counter() - start:.1f} s")
        return judge
    return load


def server_config(args: argparse.Namespace):
    from services.scheduler import SchedulerConfig
    from services.server import ServerConfig
    from services.validation import Limits

    limits = Limits(max_responses=args.max_responses, max_k=args.max_k, max_new_tokens=args.max_new_tokens_limit,
                    max_batch_items=args.max_batch_items, max_text_chars=args.max_text_chars,
                    max_messages=args.max_messages, max_message_bytes=int(args.max_message_mb * 2**20))
    defaults = SamplingOptions(k=args.default_k, temperature=args.default_temperature,
                               max_new_tokens=args.default_max_new_tokens)
    scheduler = SchedulerConfig(max_wait_ms=args.max_wait_ms, max_linger_ms=args.max_linger_ms,
                                max_batch_tokens=args.max_batch_tokens,
                                max_batch_sequences=args.max_batch_sequences, max_queue=args.max_queue)
    return ServerConfig(limits=limits, defaults=defaults, scheduler=scheduler,
                        max_concurrent_rpcs=args.max_concurrent_rpcs, grace_s=args.grace,
                        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
                        metrics_host=args.host, http_port=None if args.http_port < 0 else args.http_port)


def set_threads(threads: int) -> None:
    """Torch CPU threads: ``threads``, or by default one less than the CPUs (at least 1).

    The spare core runs the event loop, tokenization and the clients. Measured on the
    2-core machine: with 2 torch threads the engine thread's passes took 20-28 s instead
    of 1 s whenever other processes were busy, as OpenMP's barriers wait on a core that
    another process holds.
    """
    import torch

    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) - 1))


def _cache_factory(args: argparse.Namespace):
    from services.cache import MemoryCache, RedisCache

    if args.no_cache:
        return None
    if args.redis_url:
        return lambda: RedisCache(args.redis_url, ttl_s=args.cache_ttl)
    return MemoryCache


def cmd_serve(args: argparse.Namespace) -> int:
    from services.server import run_until_signal

    set_threads(args.threads)
    try:
        config = server_config(args)
    except ValueError as e:
        raise SystemExit(f"grm serve: {e}") from None

    def say(message: str) -> None:
        print(message, flush=True)

    try:
        return asyncio.run(run_until_signal(_loader(args), f"{args.host}:{args.port}", config,
                                            _cache_factory(args), say))
    except OSError as e:
        raise SystemExit(f"grm serve: {e}") from None


def score_remote(args: argparse.Namespace, item: ScoreInput) -> int:
    """``grm score --target``: score through a running service and print like the local command."""
    import grpc

    from grm.cli import format_result
    from services.client import RewardClient

    _say(f"scoring through {args.target} (k={args.k}, max_new_tokens={args.max_new_tokens}) ...")
    with RewardClient(args.target, timeout_s=args.timeout) as client:
        try:
            reply = client.score(item.conversation, item.responses, principles=item.principles,
                                 reference=item.reference, k=args.k, temperature=args.temperature,
                                 top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                 aggregation=args.aggregation, k_meta=args.k_meta,
                                 cache_policy=args.cache_policy, return_judgments=args.show)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 2
    source = "from the cache" if reply.from_cache else f"computed in {reply.latency_ms:.0f} ms"
    _say(f"done ({source})")
    print(format_result(item, reply.result, args.show))
    return 0


def format_info(info) -> str:
    limits = ", ".join(f"{k}={v}" for k, v in info.limits.items())
    d = info.default_sampling
    return "\n".join([
        f"model:     {info.model_id}", f"revision:  {info.revision}",
        f"template:  {info.template_version}", f"context:   {info.max_context} tokens",
        f"meta RM:   {info.meta_rm_id or '(none: meta voting unavailable)'}",
        f"cache:     {info.cache_backend} ({info.cache_state})",
        f"defaults:  k={d.k} temperature={d.temperature} top_p={d.top_p} max_new_tokens={d.max_new_tokens}",
        f"limits:    {limits}", f"server:    {info.server_version}"])


def cmd_info_remote(args: argparse.Namespace) -> int:
    import grpc

    from services.client import RewardClient

    with RewardClient(args.target, timeout_s=args.timeout) as client:
        try:
            print(format_info(client.info()))
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 2
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Serve the default GRM in-process, score an example over gRPC, print it, shut down."""
    from grm.cli import format_result
    from services.cache import MemoryCache
    from services.client import RewardClient
    from services.server import BackgroundServer, ServerConfig

    set_threads(args.threads)
    _say("step 1/4: starting the reward service on a free local port ...")
    with BackgroundServer(_loader(args), "127.0.0.1:0", ServerConfig(), MemoryCache) as server:
        _say(f"step 2/4: serving on {server.address}; scoring an example through the gRPC client "
             f"(k={args.k}, max_new_tokens={args.max_new_tokens}) ...")
        with RewardClient(server.address) as client:
            start = time.perf_counter()
            reply = client.score(DEMO_INPUT.conversation, DEMO_INPUT.responses, k=args.k, seed=args.seed,
                                 max_new_tokens=args.max_new_tokens, return_judgments=True)
            print(f"query: {DEMO_INPUT.query}")
            print(format_result(DEMO_INPUT, reply.result, show=True))
            _say(f"scored in {time.perf_counter() - start:.2f} s")
            _say("step 3/4: the same request again is answered from the cache ...")
            again = client.score(DEMO_INPUT.conversation, DEMO_INPUT.responses, k=args.k, seed=args.seed,
                                 max_new_tokens=args.max_new_tokens)
            print(f"\nsecond call: from_cache={again.from_cache}, rewards={list(again.result.rewards)}, "
                  f"server time {again.latency_ms:.1f} ms")
            print("\n" + format_info(client.info()))
        _say("step 4/4: shutting down ...")
    _say("done")
    return 0
