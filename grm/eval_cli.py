"""``grm eval``: accuracy@k of the GRM on labelled preference data, as a JSON report and a plot.

    grm eval --data pairs.jsonl -k 1,2,4,8,16 --output report.json --plot acc.png
    grm eval --data synthetic:test:500 --model ckpt/ --meta-rm ckpt-meta/ --samples 16
    grm eval --data hh.jsonl --target 127.0.0.1:50051 --limit 200 --judgments judgments.jsonl

For every item it samples S judgments once (``--samples``, temperature 0.5) and one
greedy judgment, then estimates voting@k and MetaRM@k for every k <= S by drawing
k-subsets of the S samples, with 95% intervals from a bootstrap over items
(``grm.evaluate``). With a meta RM the report also says how well its ratings separate
samples of the same item (right from wrong rankings, untied from tied), which is what guided
voting depends on. Scoring runs in-process (``--model``, default: the bundled GRM) or
through a running reward service (``--target``). Unusable lines are reported and skipped.

Only argparse is imported at module level: ``grm.cli`` builds its parser from here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

PLOT_LABELS = {"voting": "Voting@k", "meta_voting": "MetaRM@k"}


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


def add_eval_args(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--meta-rm", help="meta RM checkpoint (in-process scoring only)")
    p.add_argument("--samples", type=int, default=None,
                   help="judgments sampled per item, S >= every k (default max(16, largest k))")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds (default 1000)")
    p.add_argument("--temperature", type=float, default=0.5, help="sampling temperature (default 0.5)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--limit", type=int, default=None, help="use the first N usable items")
    p.add_argument("--seed", type=int, default=0, help="seeds the samples' shuffles and the bootstrap")
    p.add_argument("--batch-size", type=int, default=8,
                   help="items per engine call (with --target: concurrent requests)")


def load_data(spec: str, limit: int | None):
    """Items and skipped lines from a JSONL file or from ``synthetic:SPLIT:N[:SEED]``."""
    from grm.evaluate import parse_lines

    if spec.startswith("synthetic:"):
        from policy.spct.tasks import generate_tasks, task_to_record

        parts = spec.split(":")
        if len(parts) not in (3, 4) or not all(p.isdigit() for p in parts[2:]):
            raise SystemExit(f"--data synthetic must look like synthetic:SPLIT:N[:SEED], got {spec!r}")
        count = int(parts[2]) if limit is None else min(int(parts[2]), limit)
        try:
            tasks = generate_tasks(count, seed=int(parts[3]) if len(parts) == 4 else 0, split=parts[1])
        except ValueError as e:
            raise SystemExit(f"--data {spec}: {e}") from None
        return parse_lines((json.dumps(task_to_record(t)) for t in tasks), limit)
    try:
        with open(spec, encoding="utf-8") as f:
            return parse_lines(f, limit)
    except OSError as e:
        raise SystemExit(f"--data: cannot read {spec}: {e}") from None


def local_scorer(grm):
    """jobs [(input, sampling, aggregation)] -> ScoreResult or (SkipReason, detail), one engine call."""
    from grm.evaluate import SkipReason
    from grm.judge import InputTooLong

    def score(jobs):
        plans, out = [], []
        for item, sampling, aggregation in jobs:
            try:
                plans.append(grm.plan(item, sampling, aggregation))
                out.append(None)
            except InputTooLong as e:
                out.append((SkipReason.TOO_LONG, str(e)))
        results = iter(grm.run_plans(plans))
        return [next(results) if o is None else o for o in out]
    return score


def remote_scorer(client, workers: int):
    """Like ``local_scorer`` through ``services.client.RewardClient``, ``workers`` calls at a time.
    One Score call per job: each item needs its own seed, and ScoreBatch shares one."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from grm.evaluate import SkipReason

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


def open_scorer(args):
    """(scorer, model description, whether a meta RM is available)."""
    if args.target:
        if args.meta_rm:
            raise SystemExit("--meta-rm is for in-process scoring; the service at --target has its own")
        from services.client import RewardClient

        client = RewardClient(args.target)
        client.wait_ready(timeout_s=60)
        info = client.info()
        model = {"id": info.model_id, "revision": info.revision, "template_version": info.template_version,
                 "meta_rm": info.meta_rm_id or None, "target": args.target}
        return remote_scorer(client, args.batch_size), model, bool(info.meta_rm_id)
    from grm.default_model import default_meta_rm_path, default_model_path
    from grm.judge import GenerativeRewardModel

    path = args.model or str(default_model_path())
    meta = args.meta_rm or (None if args.model else default_meta_rm_path())
    print(f"loading {path} ...", file=sys.stderr)
    grm = GenerativeRewardModel.load(path, meta_rm=str(meta) if meta else None)
    model = {"id": grm.model_id, "revision": grm.revision, "template_version": grm.template.version,
             "meta_rm": grm.meta_rm.model_id if grm.meta_rm else None, "target": None}
    return local_scorer(grm), model, grm.meta_rm is not None


def item_seed(seed: int, index: int, stage: str) -> int:
    digest = hashlib.blake2b(f"grm-eval:{seed}:{index}:{stage}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def score_items(scorer, items, *, samples: int, temperature: float, max_new_tokens: int, seed: int,
                meta: bool, batch_size: int, log=None):
    """S sampled judgments and one greedy judgment per item, ``batch_size`` items per scorer call.

    Returns (items kept, sampled results, greedy results, items that could not be scored).
    """
    from grm.evaluate import Skipped
    from grm.types import Aggregation, AggregationOptions, SamplingOptions, ScoreResult

    aggregation = AggregationOptions(Aggregation.META_VOTING if meta else Aggregation.VOTING)
    kept, sampled, greedy, failed = [], [], [], []
    start_time = time.monotonic()
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        jobs = []
        for index, item in enumerate(batch, start):
            jobs.append((item.input, SamplingOptions(k=samples, temperature=temperature, max_new_tokens=max_new_tokens,
                                                     seed=item_seed(seed, index, "sampled")), aggregation))
            jobs.append((item.input, SamplingOptions(k=1, temperature=0.0, max_new_tokens=max_new_tokens,
                                                     seed=item_seed(seed, index, "greedy")), AggregationOptions()))
        out = scorer(jobs)
        for item, s, g in zip(batch, out[0::2], out[1::2]):
            problem = next((r for r in (s, g) if not isinstance(r, ScoreResult)), None)
            if problem is not None:
                failed.append(Skipped(item.line, *problem))
            else:
                kept.append(item)
                sampled.append(s)
                greedy.append(g)
        if log:
            done, elapsed = start + len(batch), time.monotonic() - start_time
            log(f"scored {done}/{len(items)} items, {done * (samples + 1) / elapsed:.1f} judgments/s")
    return kept, sampled, greedy, failed


def cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from grm.evaluate import matrix_from_results, summarize

    samples = args.samples or max(16, max(args.k))
    for name, value, low in (("--samples", samples, max(args.k)), ("--bootstrap", args.bootstrap, 1),
                             ("--batch-size", args.batch_size, 1), ("--limit", args.limit or 1, 1)):
        if value < low:
            raise SystemExit(f"{name} must be >= {low}, got {value}")
    items, skipped = load_data(args.data, args.limit)
    _print_skipped(skipped)
    if not items:
        raise SystemExit(f"{args.data}: no usable items ({len(skipped)} lines skipped)")
    scorer, model, has_meta = open_scorer(args)
    aggregations = args.aggregation or (["voting", "meta_voting"] if has_meta else ["voting"])
    if "meta_voting" in aggregations and not has_meta:
        raise SystemExit("--aggregation meta_voting needs a meta RM: give --meta-rm (or a --target that has one)")
    began = time.monotonic()
    kept, sampled, greedy, failed = score_items(
        scorer, items, samples=samples, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
        seed=args.seed, meta="meta_voting" in aggregations, batch_size=args.batch_size,
        log=lambda line: print(line, file=sys.stderr))
    seconds = time.monotonic() - began
    _print_skipped(failed)
    if not kept:
        raise SystemExit(f"{args.data}: no item could be scored ({len(failed)} failed)")
    labels = [it.best for it in kept]
    matrix = matrix_from_results(sampled, labels, meta="meta_voting" in aggregations)
    greedy_correct = np.array([g.best == b for g, b in zip(greedy, labels)])
    greedy_shown = np.array([g.judgments[0].permutation.index(b) for g, b in zip(greedy, labels)])
    summary = summarize(matrix, greedy_correct, greedy_shown, args.k, aggregations, args.bootstrap, args.seed)
    report = {
        "format": "grm-eval/1",
        "settings": {"data": args.data, "model": model, "k": args.k, "aggregations": aggregations,
                     "samples": samples, "temperature": args.temperature, "greedy_temperature": 0.0,
                     "max_new_tokens": args.max_new_tokens, "k_meta": "max(1, k // 2)",
                     "bootstrap_rounds": args.bootstrap, "interval": 0.95, "seed": args.seed, "limit": args.limit},
        "items": len(kept),
        "skipped": {"count": len(skipped) + len(failed), "by_reason": _count_reasons(skipped + failed),
                    "lines": [{"line": s.line, "reason": str(s.reason), "detail": s.detail}
                              for s in skipped + failed]},
        **summary,
        "samples_total": int(matrix.valid.size), "samples_valid": int(matrix.valid.sum()),
        "invalid_reasons": _sum_reasons(sampled),
        "greedy_valid_rate": float(np.mean([g.num_valid for g in greedy])),
        "greedy_invalid_reasons": _sum_reasons(greedy),
        "timing": {"seconds": seconds, "judgments_per_s": len(kept) * (samples + 1) / max(seconds, 1e-9)},
    }
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.judgments:
        write_judgments(args.judgments, kept, sampled, greedy)
    if args.plot:
        plot_accuracy(report, args.plot)
    print(format_table(report))
    return 0


def _judgment_json(j) -> dict:
    return {"text": j.text, "scores": None if j.scores is None else list(j.scores),
            "permutation": list(j.permutation), "reason": None if j.reason is None else str(j.reason),
            "meta_score": j.meta_score}


def write_judgments(path: str, kept, sampled, greedy) -> None:
    """One JSON line per scored item: its source line, the labelled best response, and its
    sampled and greedy judgments (scores in the data's response order, ``permutation`` the
    order shown to the judge), so the principles and critiques behind a figure can be read."""
    with open(path, "w", encoding="utf-8") as f:
        for item, s, g in zip(kept, sampled, greedy):
            f.write(json.dumps({"line": item.line, "best": item.best,
                                "sampled": [_judgment_json(j) for j in s.judgments],
                                "greedy": _judgment_json(g.judgments[0])}) + "\n")


def _print_skipped(skipped, shown: int = 10) -> None:
    for s in skipped[:shown]:
        print(f"skipped line {s.line}: {s.reason}{': ' + s.detail if s.detail else ''}", file=sys.stderr)
    if len(skipped) > shown:
        print(f"... and {len(skipped) - shown} more skipped lines (all listed in the report)", file=sys.stderr)


def _count_reasons(skipped) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in skipped:
        counts[str(s.reason)] = counts.get(str(s.reason), 0) + 1
    return dict(sorted(counts.items()))


def _sum_reasons(results) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        for reason, n in r.invalid_reasons.items():
            counts[reason] = counts.get(reason, 0) + n
    return dict(sorted(counts.items()))


def _pct(entry: dict) -> str:
    lo, hi = entry["interval"]
    return f"{100 * entry['accuracy']:5.1f} [{100 * lo:5.1f}, {100 * hi:5.1f}]"


def format_table(report: dict) -> str:
    """The report's figures for a terminal: accuracy@k per aggregation, greedy, validity, position."""
    s, acc = report["settings"], report["accuracy"]
    curves = [a for a in s["aggregations"] if a in acc]
    lines = [f"{report['items']} items ({report['skipped']['count']} skipped), {s['samples']} samples each, "
             f"95% intervals over {s['bootstrap_rounds']} bootstrap rounds",
             f"{'k':>4}  " + "".join(f"{PLOT_LABELS[a]:<22}" for a in curves)]
    for row, k in enumerate(s["k"]):
        lines.append(f"{k:>4}  " + "".join(f"{_pct(acc[a][row]):<22}" for a in curves))
    lines.append(f"greedy  {_pct(acc['greedy'])}")
    lines.append(f"parse-valid  {100 * report['parse_valid_rate']:.1f}% of {report['samples_total']} samples, "
                 f"greedy {100 * report['greedy_valid_rate']:.1f}%")
    if "meta_rm" in report:
        sep = report["meta_rm"]
        right, untied = (("-" if v is None else f"{v:.3f}")
                         for v in (sep["right_vs_wrong_auc"], sep["untied_vs_tied_auc"]))
        lines.append(f"meta RM within items: AUC right vs wrong ranking {right} ({sep['right_vs_wrong_pairs']} "
                     f"pairs), untied vs tied {untied} ({sep['untied_vs_tied_pairs']} pairs)")
    for name, rows in report["position_bias"].items():
        cells = [f"pos {r['position']}: " + ("-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}")
                 + f" (n={r['count']})" for r in rows]
        lines.append(f"best shown at, {name}:  " + "  ".join(cells))
    return "\n".join(lines)


def plot_accuracy(report: dict, path: str) -> None:
    """Accuracy (%) against k on a log2 axis: a line and interval band per aggregation, greedy flat."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    acc, ks = report["accuracy"], report["settings"]["k"]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name in report["settings"]["aggregations"]:
        rows = acc[name]
        ax.plot(ks, [100 * r["accuracy"] for r in rows], marker="o", label=PLOT_LABELS[name])
        ax.fill_between(ks, [100 * r["interval"][0] for r in rows], [100 * r["interval"][1] for r in rows], alpha=0.2)
    greedy = acc["greedy"]
    ax.axhline(100 * greedy["accuracy"], color="gray", linestyle="--", label="greedy")
    ax.axhspan(100 * greedy["interval"][0], 100 * greedy["interval"][1], color="gray", alpha=0.1)
    if len(ks) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (judgments voted)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{report['settings']['model']['id'] or 'GRM'}: {report['items']} items, "
                 f"{report['settings']['samples']} samples each", fontsize=9)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
