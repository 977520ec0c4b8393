"""``grm serve``: the reward service over gRPC (and optionally HTTP) until SIGTERM.

    grm serve                                   # bundled GRM on 127.0.0.1:50051, in-memory cache
    grm serve --model ckpt --port 0 --redis-url redis://127.0.0.1:6379/0

Progress goes to stderr; the parseable ``serving on HOST:PORT`` line goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio

from grm.types import Limits, SamplingOptions
from grm_cli.common import (add_model_args, add_sampling_args, add_server_safety_args, check_binds, server_tls,
                            set_threads)
from grm_cli.engine_flags import add_engine_args, engine_passes, serve_loader
from services.admission import AdmissionConfig
from services.cache import MemoryCache, RedisCache
from services.scheduler import SchedulerConfig
from services.server import ServerConfig, grpc_address, run_until_signal

NAME = "serve"
HELP = "serve the GRM over gRPC until SIGTERM"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``grm serve``: model, address, cache, limits, scheduler, metrics."""
    add_model_args(p)
    add_engine_args(p)
    p.add_argument("--template", help="judge template name or JSON path (default: the checkpoint's own)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--prefix-cache-mb", type=float, default=512,
                   help="memory for prompt prefixes kept across calls (template head, shared conversations); "
                        "0 turns it off (default 512)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: CPUs - 1, leaving a core to gRPC and tokenization)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port; 0 picks a free one (default 50051)")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="Prometheus /metrics port; 0 picks a free one, -1 turns it off (default 0)")
    p.add_argument("--http-port", type=int, default=-1,
                   help="OpenRLHF-compatible HTTP reward endpoint (POST /get_reward) on --host; "
                        "0 picks a free one (default -1: off)")
    p.add_argument("--record", type=int, default=0, metavar="N",
                   help="keep the last N scored inputs with their judgments for the inspector's "
                        "recent-requests pages on --http-port (default 0: off, they are users' data)")
    p.add_argument("--redis-url", help="cache scores in Redis (default: an in-memory cache)")
    p.add_argument("--cache-ttl", type=int, default=86_400, help="Redis entry lifetime in s (default 1 day)")
    p.add_argument("--no-cache", action="store_true", help="no score cache at all")
    p.add_argument("--max-responses", type=int, default=16, help="responses per input (default 16)")
    p.add_argument("--max-k", type=int, default=32, help="largest k (default 32)")
    p.add_argument("--max-new-tokens-limit", type=int, default=2048, help="largest max_new_tokens (default 2048)")
    p.add_argument("--max-batch-items", type=int, default=512, help="inputs per ScoreBatch (default 512)")
    p.add_argument("--max-text-chars", type=int, default=200_000, help="characters per text field")
    p.add_argument("--max-messages", type=int, default=64, help="messages per conversation (default 64)")
    p.add_argument("--max-message-mb", type=float, default=64, help="largest request in MiB (default 64)")
    add_sampling_args(p, "default-", ", when a request leaves it unset")
    p.add_argument("--max-concurrent-rpcs", type=int, default=256,
                   help="calls in progress before RESOURCE_EXHAUSTED (default 256)")
    p.add_argument("--max-queue", type=int, default=1024, help="inputs waiting for the engine (default 1024)")
    p.add_argument("--max-wait-ms", type=float, default=20.0,
                   help="micro-batching: longest gap between announced inputs the engine waits out (ms)")
    p.add_argument("--max-linger-ms", type=float, default=200.0,
                   help="micro-batching: longest total wait for announced inputs (ms)")
    p.add_argument("--max-batch-tokens", type=int, default=1 << 20,
                   help="cap per engine pass on sum(prompt + max_new_tokens) over sequences")
    p.add_argument("--max-batch-sequences", type=int, default=512, help="sequences per engine pass")
    p.add_argument("--grace", type=float, default=30.0, help="seconds to drain calls on SIGTERM (default 30)")
    add_security_args(p)


def add_security_args(p: argparse.ArgumentParser) -> None:
    """TLS, tokens, the bind rule and per-caller admission limits (docs: README, "Running it on a network")."""
    net = add_server_safety_args(p)
    net.add_argument("--tls-client-ca", help="PEM CA that client certificates must chain to (mutual TLS)")
    net.add_argument("--inspector-admin", action="append", default=[], metavar="NAME",
                     help="a token name that sees every caller's recorded inputs in the inspector "
                          "(repeatable; other callers see their own)")
    net.add_argument("--metrics-host", default="127.0.0.1",
                     help="interface of the /metrics port (default 127.0.0.1: this machine only; "
                          "beyond it the bind rule of --host applies)")
    net.add_argument("--max-calls-per-caller", type=int, default=0,
                     help="calls in progress per token name (or per peer without tokens); 0 = no cap")
    net.add_argument("--max-sequences-per-caller", type=int, default=0,
                     help="work in progress per caller, in sequences (inputs x k); a larger call runs only "
                          "when its caller has nothing else in progress; 0 = no cap")
    net.add_argument("--calls-per-s", type=float, default=0.0,
                     help="calls per second per caller (a token bucket); 0 = no rate limit")
    net.add_argument("--burst", type=int, default=0, help="the token bucket's size (default: --calls-per-s)")
    net.add_argument("--max-queue-tokens", type=int, default=0,
                     help="work waiting for the engine, in prompt + budget tokens; 0 = no bound")


def server_config(args: argparse.Namespace) -> ServerConfig:
    limits = Limits(max_responses=args.max_responses, max_k=args.max_k, max_new_tokens=args.max_new_tokens_limit,
                    max_batch_items=args.max_batch_items, max_text_chars=args.max_text_chars,
                    max_messages=args.max_messages, max_message_bytes=int(args.max_message_mb * 2**20))
    defaults = SamplingOptions(k=args.default_k, temperature=args.default_temperature,
                               max_new_tokens=args.default_max_new_tokens)
    scheduler = SchedulerConfig(max_wait_ms=args.max_wait_ms, max_linger_ms=args.max_linger_ms,
                                max_batch_tokens=args.max_batch_tokens,
                                max_batch_sequences=args.max_batch_sequences, max_queue=args.max_queue,
                                max_queue_tokens=args.max_queue_tokens, workers=engine_passes(args))
    tls = server_tls(args, args.tls_client_ca)
    check_binds(args, tls, host=args.host, metrics_host=None if args.metrics_port < 0 else args.metrics_host)
    admission = AdmissionConfig(max_calls_per_caller=args.max_calls_per_caller, calls_per_s=args.calls_per_s,
                                burst=args.burst, max_sequences_per_caller=args.max_sequences_per_caller)
    return ServerConfig(limits=limits, defaults=defaults, scheduler=scheduler,
                        max_concurrent_rpcs=args.max_concurrent_rpcs, grace_s=args.grace,
                        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
                        metrics_host=args.metrics_host, http_port=None if args.http_port < 0 else args.http_port,
                        record=args.record, tls=tls, token_file=args.token_file, admission=admission,
                        admins=tuple(args.inspector_admin), allowed_hosts=tuple(args.allowed_host))


def cache_factory(args: argparse.Namespace):
    """The score cache the flags ask for, as a factory the server calls on its own loop."""
    if args.no_cache:
        return None
    if args.redis_url:
        return lambda: RedisCache(args.redis_url, ttl_s=args.cache_ttl)
    return MemoryCache


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    try:
        config = server_config(args)
        loader = serve_loader(args)
    except ValueError as e:
        raise SystemExit(f"grm serve: {e}") from None

    def say(message: str) -> None:
        print(message, flush=True)

    try:
        return asyncio.run(run_until_signal(loader, grpc_address(args.host, args.port), config,
                                            cache_factory(args), say))
    except OSError as e:
        raise SystemExit(f"grm serve: {e}") from None
