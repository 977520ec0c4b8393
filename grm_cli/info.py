"""``grm info``: describe a running service (``--target``) or a model loaded here.

    grm info --target 127.0.0.1:50051
    grm info --model path/to/checkpoint
"""

from __future__ import annotations

import argparse
import sys

import grpc

from grm.default_model import default_model_path
from grm.judge import GenerativeRewardModel
from grm_cli.common import add_model_args, format_info, printable, say
from grm_cli.connect import add_client_args, client_options
from services.client import RewardClient

NAME = "info"
HELP = "describe a running service (--target) or a model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--target", help="a running service at HOST:PORT")
    p.add_argument("--timeout", type=float, default=30.0)
    add_client_args(p)


def run(args: argparse.Namespace) -> int:
    if args.target:
        with RewardClient(args.target, timeout_s=args.timeout, **client_options(args)) as client:
            try:
                print(format_info(client.info()))
            except grpc.RpcError as e:
                print(f"error: {e.code().name}: {printable(e.details() or '')}", file=sys.stderr)
                return 2
        return 0
    path = args.model or str(default_model_path())
    say(f"loading {path} ...")
    judge = GenerativeRewardModel.load(path, meta_rm=args.meta_rm)
    print(printable(f"model:     {judge.model_id}\nrevision:  {judge.revision}\ntemplate:  {judge.template.version}\n"
                    f"context:   {judge.max_context} tokens\n"
                    f"meta RM:   {judge.meta_rm.model_id if judge.meta_rm else '(none)'}"))
    return 0
