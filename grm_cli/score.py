"""``grm score``: score responses with the judge, in this process or through a running service.

    grm score --query "Name a prime." --response 7 --response 9 --show
    grm score --file example.json -k 8 --seed 1
    grm score --target 127.0.0.1:50051 --query "Name a prime." --response 7 --response 9
"""

from __future__ import annotations

import argparse
import sys

import grpc

import grm.defaults as defaults
from grm.default_model import default_meta_rm_path, default_model_path
from grm.judge import GenerativeRewardModel
from grm.types import ScoreInput
from grm_cli.common import add_model_args, add_sampling_args, format_result, load_input, printable, say
from grm_cli.connect import add_client_args, client_options
from services.client import RewardClient

NAME = "score"
HELP = "score responses with the GRM (in-process, or --target a service)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--target", help="score through a running service at HOST:PORT instead")
    p.add_argument("--cache-policy", choices=["use", "refresh", "bypass"], default="use",
                   help="with --target: the service's score cache (default use)")
    p.add_argument("--timeout", type=float, default=300.0, help="with --target: deadline in s")
    add_client_args(p)
    p.add_argument("--query", help="the user's query (a one-turn conversation)")
    p.add_argument("--response", action="append", help="a candidate response (repeat for more)")
    p.add_argument("--file", help="JSON file with query/conversation, responses, principles, reference")
    p.add_argument("--principles", help="your own criteria; the model then only critiques and scores")
    p.add_argument("--reference", help="a reference answer shown to the judge")
    add_sampling_args(p)
    p.add_argument("--top-p", type=float, default=defaults.TOP_P,
                   help=f"nucleus sampling mass (default {defaults.TOP_P:g})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aggregation", choices=["voting", "meta_voting"], default="voting")
    p.add_argument("--k-meta", type=int, default=None,
                   help="samples kept by meta voting (default: half of k, at least 1)")
    p.add_argument("--show", action="store_true", help="print every sample's principles and critique")


def run(args: argparse.Namespace) -> int:
    item = load_input(args)
    if args.target:
        return _score_remote(args, item)
    path = args.model or str(default_model_path())
    meta = args.meta_rm or (None if args.model else default_meta_rm_path())
    say(f"loading {path} ...")
    judge = GenerativeRewardModel.load(path, meta_rm=str(meta) if meta else None)
    result = judge.score(item.conversation, item.responses, k=args.k, temperature=args.temperature,
                         top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
                         aggregation=args.aggregation, k_meta=args.k_meta,
                         principles=item.principles, reference=item.reference)
    print(format_result(item, result, args.show))
    return 0


def _score_remote(args: argparse.Namespace, item: ScoreInput) -> int:
    say(f"scoring through {args.target} (k={args.k}, max_new_tokens={args.max_new_tokens}) ...")
    with RewardClient(args.target, timeout_s=args.timeout, **client_options(args)) as client:
        try:
            reply = client.score(item.conversation, item.responses, principles=item.principles,
                                 reference=item.reference, k=args.k, temperature=args.temperature,
                                 top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                 aggregation=args.aggregation, k_meta=args.k_meta,
                                 cache_policy=args.cache_policy, return_judgments=args.show)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {printable(e.details() or '')}", file=sys.stderr)
            return 2
    source = "from the cache" if reply.from_cache else f"computed in {reply.latency_ms:.0f} ms"
    say(f"done ({source})")
    print(format_result(item, reply.result, args.show))
    return 0
