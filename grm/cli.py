"""The ``grm`` command line.

    grm score --query "Name a prime." --response 7 --response 9 --show
    grm score --file example.json -k 8 --seed 1
    grm info

Each subcommand is a function in ``COMMANDS``; ``main`` parses and dispatches.
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grm", description="Generative reward model tools")
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="score responses with the GRM")
    score.add_argument("--model", help="checkpoint path or hub id (default: the bundled GRM)")
    score.add_argument("--meta-rm", help="meta RM checkpoint (needed for --aggregation meta_voting)")
    add_score_args(score)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"score": cmd_score}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
