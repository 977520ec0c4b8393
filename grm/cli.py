"""The ``grm`` command line.

    grm score --query "Name a prime." --response 7 --response 9 --show
    grm score --file example.json -k 8 --seed 1
    grm score --target 127.0.0.1:50051 --query "Name a prime." --response 7 --response 9
    grm serve                      # the reward service on 127.0.0.1:50051 (see services/cli.py)
    grm demo                       # serve in-process, score an example over gRPC, shut down
    grm info [--target HOST:PORT]
    grm grpo --model POLICY --prompts prompts.jsonl --target HOST:PORT   # GRPO with the service as reward
    grm grpo-demo                  # GRPO on a small policy against the bundled GRM, true pass rate plotted

Each subcommand is a function in ``COMMANDS``; ``main`` parses and dispatches. The network
commands live in ``services.cli`` and are imported inside the command functions, so that
importing ``grm`` never imports ``services`` (imports flow services -> grm).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from grm.types import ScoreInput, ScoreResult


def load_input(args: argparse.Namespace) -> ScoreInput:
    """Read the query/conversation and responses from flags or a JSON file.

    The file holds ``{"query": str}`` or ``{"conversation": [{"role", "content"}...]}``,
    plus ``"responses": [str, ...]`` and optionally ``"principles"`` and ``"reference"``.
    """
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            data = json.load(f)
        conversation = data.get("conversation") or data.get("messages") or data.get("query")
        if not conversation or not data.get("responses"):
            raise SystemExit(f"{args.file}: needs 'query' or 'conversation', and 'responses'")
        return ScoreInput(conversation, data["responses"], data.get("principles"), data.get("reference"))
    if not args.query or not args.response:
        raise SystemExit("give --query and at least one --response, or --file")
    return ScoreInput(args.query, args.response, args.principles, args.reference)


def format_result(item: ScoreInput, result: ScoreResult, show: bool) -> str:
    """A terminal-readable summary: one line per response, then (with show) each judgment."""
    lines = [f"{result.num_valid}/{len(result.judgments)} valid samples, "
             f"{result.num_used} used ({result.aggregation})"]
    for i, response in enumerate(item.responses):
        reward = "unscored" if result.rewards[i] is None else f"{result.rewards[i]:.2f}"
        spread = "" if result.spread[i] is None else f" +-{result.spread[i]:.2f}"
        mark = " <- best" if result.best == i else ""
        preview = response if len(response) <= 60 else response[:57] + "..."
        lines.append(f"  response {i + 1}: reward {reward}{spread}  votes {result.vote_sums[i]}"
                     f"{mark}  | {preview!r}")
    if result.invalid_reasons:
        lines.append("  invalid samples: " + ", ".join(f"{r} x{c}" for r, c in result.invalid_reasons.items()))
    if show:
        for j, judgment in enumerate(result.judgments):
            order = " ".join(str(p + 1) for p in judgment.permutation)
            status = f"scores {list(judgment.scores)}" if judgment.valid else f"invalid: {judgment.reason}"
            lines += ["", f"--- sample {j + 1} (responses shown in order {order}; {status}) ---",
                      "principles:", _indent(judgment.principles or "(none)"),
                      "critique:", _indent(judgment.critique or "(none)")]
            if not judgment.valid:
                lines += ["raw text:", _indent(judgment.text[:2000] or "(empty)")]
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines())


def cmd_score(args: argparse.Namespace) -> int:
    from grm.default_model import default_meta_rm_path, default_model_path
    from grm.judge import GenerativeRewardModel

    item = load_input(args)
    if args.target:
        from services.cli import score_remote

        return score_remote(args, item)
    path = args.model or str(default_model_path())
    meta = args.meta_rm or (None if args.model else default_meta_rm_path())
    print(f"loading {path} ...", file=sys.stderr)
    grm = GenerativeRewardModel.load(path, meta_rm=str(meta) if meta else None)
    result = grm.score(item.conversation, item.responses, k=args.k, temperature=args.temperature,
                       top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
                       aggregation=args.aggregation, k_meta=args.k_meta,
                       principles=item.principles, reference=item.reference)
    print(format_result(item, result, args.show))
    return 0


def add_score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--query", help="the user's query (a one-turn conversation)")
    p.add_argument("--response", action="append", help="a candidate response (repeat for more)")
    p.add_argument("--file", help="JSON file with query/conversation, responses, principles, reference")
    p.add_argument("--principles", help="your own criteria; the model then only critiques and scores")
    p.add_argument("--reference", help="a reference answer shown to the judge")
    p.add_argument("-k", type=int, default=8, help="judgments sampled per input (default 8)")
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aggregation", choices=["voting", "meta_voting"], default="voting")
    p.add_argument("--k-meta", type=int, default=None, help="samples kept by meta voting (default k/2)")
    p.add_argument("--show", action="store_true", help="print every sample's principles and critique")


def cmd_serve(args: argparse.Namespace) -> int:
    from services.cli import cmd_serve as serve

    return serve(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from services.cli import cmd_demo as demo

    return demo(args)


def cmd_eval(args: argparse.Namespace) -> int:
    from grm.eval_cli import cmd_eval as run_eval

    return run_eval(args)


def cmd_spct(args: argparse.Namespace) -> int:
    from policy.spct.pipeline import run

    return run(args)


def cmd_grpo(args: argparse.Namespace) -> int:
    from policy.train import run

    return run(args)


def cmd_grpo_demo(args: argparse.Namespace) -> int:
    from policy.demo import run

    return run(args)


def cmd_info(args: argparse.Namespace) -> int:
    """The service's info with --target; else load the model here and describe it."""
    if args.target:
        from services.cli import cmd_info_remote

        return cmd_info_remote(args)
    from grm.default_model import default_model_path
    from grm.judge import GenerativeRewardModel

    path = args.model or str(default_model_path())
    print(f"loading {path} ...", file=sys.stderr)
    grm = GenerativeRewardModel.load(path, meta_rm=args.meta_rm)
    print(f"model:     {grm.model_id}\nrevision:  {grm.revision}\ntemplate:  {grm.template.version}\n"
          f"context:   {grm.max_context} tokens\nmeta RM:   {grm.meta_rm.model_id if grm.meta_rm else '(none)'}")
    return 0


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint path or hub id (default: the bundled GRM)")
    p.add_argument("--meta-rm", help="meta RM checkpoint (needed for --aggregation meta_voting)")


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``grm serve``: model, address, cache, limits, scheduler, metrics."""
    add_model_args(p)
    p.add_argument("--template", help="judge template name or JSON path (default: the checkpoint's own)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: CPUs - 1, leaving a core to gRPC and tokenization)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port; 0 picks a free one (default 50051)")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="Prometheus /metrics port; 0 picks a free one, -1 turns it off (default 0)")
    p.add_argument("--http-port", type=int, default=-1,
                   help="OpenRLHF-compatible HTTP reward endpoint (POST /get_reward) on --host; "
                        "0 picks a free one (default -1: off)")
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
    p.add_argument("--default-k", type=int, default=8, help="k when a request leaves it unset (default 8)")
    p.add_argument("--default-temperature", type=float, default=0.5)
    p.add_argument("--default-max-new-tokens", type=int, default=512)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grm", description="Generative reward model tools")
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="score responses with the GRM (in-process, or --target a service)")
    add_model_args(score)
    score.add_argument("--target", help="score through a running service at HOST:PORT instead")
    score.add_argument("--cache-policy", choices=["use", "refresh", "bypass"], default="use",
                       help="with --target: the service's score cache (default use)")
    score.add_argument("--timeout", type=float, default=300.0, help="with --target: deadline in s")
    add_score_args(score)
    add_serve_args(sub.add_parser("serve", help="serve the GRM over gRPC until SIGTERM"))
    demo = sub.add_parser("demo", help="start the service in-process, score an example through it, stop")
    add_model_args(demo)
    demo.add_argument("--template", help=argparse.SUPPRESS)
    demo.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    demo.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: CPUs - 1)")
    demo.add_argument("-k", type=int, default=4, help="judgments sampled (default 4)")
    demo.add_argument("--max-new-tokens", type=int, default=400, help="tokens per judgment (default 400)")
    demo.add_argument("--seed", type=int, default=0)
    info = sub.add_parser("info", help="describe a running service (--target) or a model")
    add_model_args(info)
    info.add_argument("--target", help="a running service at HOST:PORT")
    info.add_argument("--timeout", type=float, default=30.0)
    from grm.eval_cli import add_eval_args  # argparse only; the work is imported by cmd_eval

    add_eval_args(sub.add_parser("eval", help="accuracy@k of the GRM on labelled preference data"))
    from policy.spct.args import add_arguments as add_spct_args  # argparse only

    add_spct_args(sub.add_parser("spct", help="train a GRM with SPCT (cold start, RFT, online RL, meta RM)"))
    from policy.args import add_demo_arguments, add_grpo_arguments  # argparse only

    add_grpo_arguments(sub.add_parser("grpo", help="train a policy with GRPO against the reward service"))
    add_demo_arguments(sub.add_parser("grpo-demo", help="GRPO on a small policy against the bundled GRM service, "
                                                        "with the true pass rate measured by the task rules"))
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "score": cmd_score, "serve": cmd_serve, "demo": cmd_demo, "info": cmd_info, "eval": cmd_eval,
    "spct": cmd_spct, "grpo": cmd_grpo, "grpo-demo": cmd_grpo_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
