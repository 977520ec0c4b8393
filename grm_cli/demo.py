"""``grm demo``: start the service in-process, score an example through it over gRPC, stop.

    grm demo                       # the bundled GRM, k=4
"""

from __future__ import annotations

import argparse
import time

from grm.types import ScoreInput
from grm_cli.common import add_model_args, format_info, format_result, judge_loader, say, set_threads
from services.cache import MemoryCache
from services.client import RewardClient
from services.server import BackgroundServer, ServerConfig

NAME = "demo"
HELP = "start the service in-process, score an example through it, stop"

DEMO_INPUT = ScoreInput(
    "Write one sentence in uppercase that ends with a question mark and includes the word blue.",
    ["IS THE SKY BLUE TODAY?", "Is the sky blue today?", "THE SKY IS BLUE."])


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--template", help=argparse.SUPPRESS)
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: CPUs - 1)")
    p.add_argument("-k", type=int, default=4, help="judgments sampled (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=400, help="tokens per judgment (default 400)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """Serve the default GRM in-process, score an example over gRPC, print it, shut down."""
    set_threads(args.threads)
    say("step 1/4: starting the reward service on a free local port ...")
    with BackgroundServer(judge_loader(args), "127.0.0.1:0", ServerConfig(), MemoryCache) as server:
        say(f"step 2/4: serving on {server.address}; scoring an example through the gRPC client "
            f"(k={args.k}, max_new_tokens={args.max_new_tokens}) ...")
        with RewardClient(server.address) as client:
            start = time.perf_counter()
            reply = client.score(DEMO_INPUT.conversation, DEMO_INPUT.responses, k=args.k, seed=args.seed,
                                 max_new_tokens=args.max_new_tokens, return_judgments=True)
            print(f"query: {DEMO_INPUT.query}")
            print(format_result(DEMO_INPUT, reply.result, show=True))
            say(f"scored in {time.perf_counter() - start:.2f} s")
            say("step 3/4: the same request again is answered from the cache ...")
            again = client.score(DEMO_INPUT.conversation, DEMO_INPUT.responses, k=args.k, seed=args.seed,
                                 max_new_tokens=args.max_new_tokens)
            print(f"\nsecond call: from_cache={again.from_cache}, rewards={list(again.result.rewards)}, "
                  f"server time {again.latency_ms:.1f} ms")
            print("\n" + format_info(client.info()))
        say("step 4/4: shutting down ...")
    say("done")
    return 0
