"""``grm eval``: accuracy@k of the judge on labelled preference data, as a JSON report and a plot.

    grm eval --data pairs.jsonl -k 1,2,4,8,16 --output report.json --plot acc.png
    grm eval --data synthetic:test:500 --model ckpt/ --meta-rm ckpt-meta/ --samples 16
    grm eval --data hh.jsonl --target 127.0.0.1:50051 --limit 200 --judgments judgments.jsonl
    grm eval --data prefs.jsonl --model ckpt/ --baseline-model base/ --hack-check -k 1,8 --samples 8

Beside the judge, the report and the printed table always hold the "longer response wins"
baseline and, for data whose lines carry a ``source``, every figure per source (grouped by
the first ``--source-depth`` ":"-separated parts). ``--baseline-model`` scores the same items
with the same settings and the judge's template through another checkpoint (a base model,
zero-shot) and reports it as its own rows; ``--hack-check`` scores content-free attacks next
to each best response (``grm.eval.attacks``; five pairs per item, ``--hack-k`` judgments each) and
reports how often any of them scores as high as the best response or higher.

The evaluation itself is ``grm.eval.run``; this module reads the flags, picks the scorer
(in-process with ``--model``, default the bundled GRM, or a running service with
``--target``) and writes the report, the judgments and the plot.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

import grm.defaults as defaults
from grm.default_model import default_meta_rm_path, default_model_path
from grm.eval.records import SkipReason, load_data
from grm.eval.report import PLOT_LABELS, format_table, plot_accuracy, write_judgments
from grm.eval.run import EvalSettings, describe_judge, evaluate, local_scorer
from grm.eval.splits import SPLITS
from grm.judge import GenerativeRewardModel
from grm_cli.common import printable, say
from grm_cli.connect import add_client_args, client_options
from services.client import RewardClient

NAME = "eval"
HELP = "accuracy@k of the GRM on labelled preference data"


def _int_list(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"-k must be comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"-k values must be >= 1, got {text!r}")
    return values


def _aggregations(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in PLOT_LABELS]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"--aggregation takes voting and/or meta_voting, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="JSONL file ({prompt, chosen, rejected}, HH dialogues, {conversation|messages, "
                        "responses, best|scores}, spct-task/1 records) or synthetic:SPLIT:N[:SEED]")
    p.add_argument("-k", type=_int_list, default=[1, 2, 4, 8, 16], help="k values (default 1,2,4,8,16)")
    p.add_argument("--aggregation", type=_aggregations, default=None,
                   help="voting,meta_voting (default: voting, plus meta_voting when a meta RM is loaded)")
    p.add_argument("--output", default="eval_report.json", help="JSON report path (default eval_report.json)")
    p.add_argument("--plot", help="PNG of accuracy against k (needs matplotlib)")
    p.add_argument("--judgments", help="also write every judgment (sampled and greedy) to this JSONL file, "
                                       "one line per scored item")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", help="checkpoint path or hub id (default: the bundled GRM)")
    source.add_argument("--target", help="host:port of a running reward service to score through")
    add_client_args(p)
    p.add_argument("--meta-rm", help="meta RM checkpoint (in-process scoring only)")
    p.add_argument("--samples", type=int, default=None,
                   help="judgments sampled per item, S >= every k (default max(16, largest k))")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds (default 1000)")
    p.add_argument("--temperature", type=float, default=defaults.TEMPERATURE,
                   help=f"sampling temperature (default {defaults.TEMPERATURE})")
    p.add_argument("--max-new-tokens", type=int, default=defaults.MAX_NEW_TOKENS,
                   help=f"tokens per judgment (default {defaults.MAX_NEW_TOKENS})")
    p.add_argument("--limit", type=int, default=None, help="use the first N usable items")
    p.add_argument("--split", choices=SPLITS, help="only the records whose prompt is in this split (by a hash "
                   "of the prompt, so records sharing a prompt stay together)")
    p.add_argument("--seed", type=int, default=0, help="seeds the samples' shuffles and the bootstrap")
    p.add_argument("--adaptive", choices=("off", "decided", "confident"), default="off",
                   help="also score every item with adaptive k (budget: --samples) and report its accuracy "
                        "and generated tokens beside fixed k (default off)")
    p.add_argument("--adaptive-z", type=float, default=2.0, help="z of the confident rule (default 2)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="items per engine call (with --target: concurrent requests)")
    p.add_argument("--baseline-model",
                   help="also evaluate this checkpoint (e.g. the base model, zero-shot) on the same items with "
                        "the same settings and the judge's template, reported as its own rows")
    p.add_argument("--hack-check", action="store_true",
                   help="score content-free attack responses next to each best response and report the share "
                        "of items where any scores as high or higher (the hack rate)")
    p.add_argument("--hack-k", type=int, default=None,
                   help="judgments per attack pair with --hack-check (default: the largest k)")
    p.add_argument("--journal", help="append every item's results to this JSONL file as they come; a rerun with "
                   "the same settings skips the items already there (resume a cut-off evaluation)")
    p.add_argument("--source-depth", type=int, default=1,
                   help="group items for per-source accuracy by the first N ':'-separated parts of their "
                        "source field (default 1)")


def remote_scorer(client: RewardClient, workers: int):
    """Like ``grm.eval.run.local_scorer`` through a running service, ``workers`` calls at a time.
    One Score call per job: each item needs its own seed, and ScoreBatch shares one."""
    def one(job):
        item, sampling, aggregation = job
        try:
            return client.score(item.conversation, item.responses, principles=item.principles,
                                reference=item.reference, sampling=sampling, aggregation=aggregation,
                                return_judgments=True, cache_policy="bypass").result
        except grpc.RpcError as e:
            return (SkipReason.SCORING_ERROR, f"{e.code().name}: {e.details()}")

    def score(jobs):
        with ThreadPoolExecutor(max(1, workers)) as pool:
            return list(pool.map(one, jobs))
    return score


def open_scorer(args: argparse.Namespace):
    """(scorer, model description, whether a meta RM is available, the judge's template:
    a JudgeTemplate in-process, its version with ``--target``)."""
    if args.target:
        if args.meta_rm:
            raise SystemExit("--meta-rm is for in-process scoring; the service at --target has its own")
        client = RewardClient(args.target, **client_options(args))
        client.wait_ready(timeout_s=60)
        info = client.info()
        model = {"id": info.model_id, "revision": info.revision, "template_version": info.template_version,
                 "meta_rm": info.meta_rm_id or None, "target": args.target}
        return remote_scorer(client, args.batch_size), model, bool(info.meta_rm_id), info.template_version
    path = args.model or str(default_model_path())
    meta = args.meta_rm or (None if args.model else default_meta_rm_path())
    say(f"loading {path} ...")
    judge = GenerativeRewardModel.load(path, meta_rm=str(meta) if meta else None)
    return local_scorer(judge), describe_judge(judge), judge.meta_rm is not None, judge.template


def open_baseline(path: str, template):
    """(scorer, model description) of ``path`` judging with the judge's template, no meta RM."""
    say(f"loading baseline {path} ...")
    try:
        base = GenerativeRewardModel.load(path, template=template)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"--baseline-model: {e}") from None
    return local_scorer(base), describe_judge(base)


def run(args: argparse.Namespace) -> int:
    try:
        settings = EvalSettings(args.data, ks=tuple(args.k), aggregations=tuple(args.aggregation or ()) or None,
                                samples=args.samples, bootstrap=args.bootstrap, temperature=args.temperature,
                                max_new_tokens=args.max_new_tokens, limit=args.limit, seed=args.seed,
                                batch_size=args.batch_size, adaptive=args.adaptive, adaptive_z=args.adaptive_z,
                                hack_check=args.hack_check, hack_k=args.hack_k, source_depth=args.source_depth,
                                journal=args.journal)
        items, skipped = load_data(args.data, args.limit, args.split)
    except ValueError as e:
        raise SystemExit(f"grm eval: {_flag_names(str(e))}") from None
    _print_skipped(skipped)
    if not items:
        raise SystemExit(f"{args.data}: no usable items ({len(skipped)} lines skipped)")
    scorer, model, has_meta, template = open_scorer(args)
    if "meta_voting" in (args.aggregation or ()) and not has_meta:
        raise SystemExit("--aggregation meta_voting needs a meta RM: give --meta-rm (or a --target that has one)")
    baseline = open_baseline(args.baseline_model, template) if args.baseline_model else None
    try:
        run_ = evaluate(scorer, model, items, skipped, settings, has_meta=has_meta, log=say, baseline=baseline)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    _print_skipped(run_.failed)
    Path(args.output).write_text(json.dumps(run_.report, indent=2) + "\n", encoding="utf-8")
    if args.judgments:
        write_judgments(args.judgments, run_.kept, run_.sampled, run_.greedy)
    if args.plot:
        plot_accuracy(run_.report, args.plot)
    print(printable(format_table(run_.report)))
    return 0


def _flag_names(message: str) -> str:
    """EvalSettings' errors name fields; the user typed flags."""
    for field, flag in (("EvalSettings.samples", "--samples"), ("EvalSettings.bootstrap", "--bootstrap"),
                        ("EvalSettings.batch_size", "--batch-size"), ("EvalSettings.limit", "--limit"),
                        ("EvalSettings.hack_k", "--hack-k"), ("EvalSettings.source_depth", "--source-depth"),
                        ("data synthetic", "--data synthetic")):
        message = message.replace(field, flag)
    return message


def _print_skipped(skipped, shown: int = 10) -> None:
    for s in skipped[:shown]:
        say(printable(f"skipped line {s.line}: {s.reason}{': ' + s.detail if s.detail else ''}"))
    if len(skipped) > shown:
        say(f"... and {len(skipped) - shown} more skipped lines (all listed in the report)")
