"""Running an evaluation: labelled data in, a ``grm-eval/1`` report out (what ``grm eval`` does).

For every item it samples S judgments once (temperature 0.5 by default) and one greedy
judgment, then estimates voting@k and MetaRM@k for every k <= S by drawing k-subsets of
the S samples, with 95% intervals from a bootstrap over items (the maths is in
``grm.eval.statistics``). A *scorer* does the sampling: ``local_scorer(judge)`` in this process,
or any function with the same contract (the command line has one that calls a running
service). With a meta RM the report also says how well its ratings separate samples of
the same item (right from wrong rankings, untied from tied).

Beside the judge, in the report and in one table (``grm.eval.report.comparison_table``): the
"longer response wins" baseline; every figure per ``source`` of the items; optionally a second
model (``baseline``: a base checkpoint zero-shot, through this same ``evaluate``), and the
hack rate of content-free attacks (``hack_check``; texts and counting in ``grm.eval.attacks``).
The items come from ``grm.eval.records``; the table and plot are in ``grm.eval.report``.

Example::

    items, skipped = load_data("synthetic:test:100", limit=None)   # grm.eval.records
    run = evaluate(local_scorer(judge), describe_judge(judge), items, skipped,
                   EvalSettings(data="synthetic:test:100", ks=(1, 2, 4, 8), hack_check=True),
                   baseline=(local_scorer(base), describe_judge(base)))
    print(format_table(run.report))                                 # grm.eval.report
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

import grm.defaults as defaults
from grm.eval.attacks import ATTACK_KINDS, attack_inputs, hack_rates
from grm.eval.grounding import grounding_report
from grm.eval.journal import Journal
from grm.eval.records import SkipReason, Skipped
from grm.eval.report import PLOT_LABELS
from grm.eval.statistics import (accuracy_figures, item_bootstrap, longer_response_correct, matrix_from_results,
                                 summarize)
from grm.judge import GenerativeRewardModel, InputTooLong
from grm.seeds import mix_seed
from grm.templates import DEFAULT_TEMPLATE, JudgeTemplate, load_template
from grm.types import ADAPTIVE_MODES, MAX_K, Aggregation, AggregationOptions, SamplingOptions, ScoreResult

# jobs [(input, sampling, aggregation)] -> per job a ScoreResult or (SkipReason, detail)
Scorer = Callable[[list], list]


@dataclass(frozen=True)
class EvalSettings:
    """What one evaluation run does; ``samples`` None means max(16, largest k)."""

    data: str  # the data spec, recorded in the report
    ks: tuple[int, ...] = (1, 2, 4, 8, 16)
    aggregations: tuple[str, ...] | None = None  # None: voting, plus meta_voting when a meta RM exists
    samples: int | None = None
    bootstrap: int = 1000
    temperature: float = defaults.TEMPERATURE
    max_new_tokens: int = defaults.MAX_NEW_TOKENS
    limit: int | None = None
    seed: int = 0
    batch_size: int = 8  # items per scorer call
    adaptive: str = "off"  # also score every item with adaptive k (budget S) and report it beside fixed k
    adaptive_z: float = 2.0  # the confident rule's z
    hack_check: bool = False  # also score content-free attacks next to each best response (grm.eval.attacks)
    hack_k: int | None = None  # judgments per attack pair; None: the largest k
    source_depth: int = 1  # group items by the first N ":"-separated parts of their source
    journal: str | None = None  # append each item's results here; a rerun skips the items found (grm.eval.journal)

    def __post_init__(self) -> None:
        if self.adaptive not in ADAPTIVE_MODES:
            raise ValueError(f"EvalSettings.adaptive must be one of {', '.join(ADAPTIVE_MODES)}, got {self.adaptive!r}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"EvalSettings.ks must be k values >= 1, got {self.ks}")
        bad = [a for a in self.aggregations or () if a not in PLOT_LABELS]
        if bad or self.aggregations == ():
            raise ValueError(f"EvalSettings.aggregations takes voting and/or meta_voting, got {self.aggregations}")
        for name, value, low in (("samples", self.samples_per_item, max(self.ks)), ("bootstrap", self.bootstrap, 1),
                                 ("batch_size", self.batch_size, 1), ("limit", self.limit or 1, 1),
                                 ("hack_k", 1 if self.hack_k is None else self.hack_k, 1),
                                 ("source_depth", self.source_depth, 1)):
            if value < low:
                raise ValueError(f"EvalSettings.{name} must be >= {low}, got {value}")
        if (self.hack_k or 1) > MAX_K:
            raise ValueError(f"EvalSettings.hack_k must be at most {MAX_K}, got {self.hack_k}")

    @property
    def samples_per_item(self) -> int:
        return self.samples or max(16, max(self.ks))


@dataclass
class EvalRun:
    report: dict  # the grm-eval/1 report
    kept: list = field(default_factory=list)  # the items scored
    sampled: list[ScoreResult] = field(default_factory=list)  # S samples each
    greedy: list[ScoreResult] = field(default_factory=list)  # one greedy judgment each
    failed: list[Skipped] = field(default_factory=list)  # items the scorer could not score


def local_scorer(judge: GenerativeRewardModel) -> Scorer:
    """A scorer that samples ``judge`` in this process, every job of a call in one engine pass."""
    def score(jobs):
        plans, out = [], []
        for item, sampling, aggregation in jobs:
            try:
                plans.append(judge.plan(item, sampling, aggregation))
                out.append(None)
            except InputTooLong as e:
                out.append((SkipReason.TOO_LONG, str(e)))
        results = iter(judge.run_plans(plans))
        return [next(results) if o is None else o for o in out]
    return score


def describe_judge(judge: GenerativeRewardModel) -> dict:
    """The report's ``model`` entry for an in-process judge."""
    return {"id": judge.model_id, "revision": judge.revision, "template_version": judge.template.version,
            "meta_rm": judge.meta_rm.model_id if judge.meta_rm else None, "target": None}


def item_seed(seed: int, index: int, stage: str) -> int:
    return mix_seed("grm-eval", seed, index, stage)


def score_items(scorer: Scorer, items, *, samples: int, temperature: float, max_new_tokens: int, seed: int,
                meta: bool, batch_size: int, log=None, journal: Journal | None = None):
    """S sampled judgments and one greedy judgment per item, ``batch_size`` items per scorer call.

    Returns (items kept, sampled results, greedy results, items that could not be scored).
    """
    aggregation = AggregationOptions(Aggregation.META_VOTING if meta else Aggregation.VOTING)
    done = journal.done if journal is not None else {}
    fresh = [(index, item) for index, item in enumerate(items) if item.line not in done]
    if log and done:
        log(f"journal: {len(items) - len(fresh)} items already scored, {len(fresh)} to go")
    start_time = time.monotonic()
    for start in range(0, len(fresh), batch_size):
        batch = fresh[start:start + batch_size]
        jobs = []
        for index, item in batch:
            jobs.append((item.input, SamplingOptions(k=samples, temperature=temperature, max_new_tokens=max_new_tokens,
                                                     seed=item_seed(seed, index, "sampled")), aggregation))
            jobs.append((item.input, SamplingOptions(k=1, temperature=0.0, max_new_tokens=max_new_tokens,
                                                     seed=item_seed(seed, index, "greedy")), AggregationOptions()))
        out = scorer(jobs)
        for (_, item), s, g in zip(batch, out[0::2], out[1::2]):
            problem = next((r for r in (s, g) if not isinstance(r, ScoreResult)), None)
            done[item.line] = problem if problem is not None else (s, g)
            if journal is not None:
                journal.add_failed(item.line, *problem) if problem is not None else journal.add(item.line, s, g)
        if log:
            scored, elapsed = start + len(batch), time.monotonic() - start_time
            log(f"scored {scored}/{len(fresh)} items, {scored * (samples + 1) / elapsed:.1f} judgments/s")
    kept, sampled, greedy, failed = [], [], [], []
    for item in items:
        result = done[item.line]
        if isinstance(result[0], ScoreResult):
            kept.append(item)
            sampled.append(result[0])
            greedy.append(result[1])
        else:
            failed.append(Skipped(item.line, SkipReason(result[0]), result[1]))
    return kept, sampled, greedy, failed


def evaluate(scorer: Scorer, model: dict, items: Sequence, skipped: Sequence, settings: EvalSettings, *,
             has_meta: bool = False, log=None, baseline: tuple[Scorer, dict] | None = None) -> EvalRun:
    """Score ``items`` and build the report; raises ValueError when nothing can be scored.

    Beside the judge the report always holds the "longer response wins" baseline and, when
    the items carry a ``source``, every figure per source; ``baseline`` (a scorer and its
    model description) adds that model's own rows, on the same items with the same settings;
    ``settings.hack_check`` adds the hack rate (``hack_report``).
    """
    aggregations = list(settings.aggregations or (["voting", "meta_voting"] if has_meta else ["voting"]))
    if "meta_voting" in aggregations and not has_meta:
        raise ValueError("aggregation meta_voting needs a meta RM")
    samples, meta = settings.samples_per_item, "meta_voting" in aggregations
    journal = None
    if settings.journal:
        journal = Journal(settings.journal, {"model": model, "samples": samples, "temperature": settings.temperature,
                                             "max_new_tokens": settings.max_new_tokens, "seed": settings.seed,
                                             "meta": meta})
    resumed = sum(item.line in journal.done for item in items) if journal is not None else 0  # of these items
    began = time.monotonic()
    kept, sampled, greedy, failed = score_items(
        scorer, list(items), samples=samples, temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens, seed=settings.seed, meta=meta, batch_size=settings.batch_size,
        log=log, journal=journal)
    seconds = time.monotonic() - began
    if not kept:
        raise ValueError(f"{settings.data}: no item could be scored ({len(failed)} failed)")
    labels = [it.best for it in kept]
    matrix = matrix_from_results(sampled, labels, meta=meta)
    greedy_correct = np.array([g.best == b for g, b in zip(greedy, labels)])
    greedy_shown = np.array([g.judgments[0].permutation.index(b) for g, b in zip(greedy, labels)])
    ks = list(settings.ks)
    summary = summarize(matrix, greedy_correct, greedy_shown, ks, aggregations, settings.bootstrap, settings.seed)
    groups = source_groups(kept, settings.source_depth)
    length = longer_response_correct([it.input.responses for it in kept], labels)
    all_skipped = list(skipped) + failed
    report = {
        "format": "grm-eval/1",
        "settings": {"data": settings.data, "model": model, "k": ks, "aggregations": aggregations,
                     "samples": samples, "temperature": settings.temperature, "greedy_temperature": 0.0,
                     "max_new_tokens": settings.max_new_tokens, "k_meta": {str(k): defaults.default_k_meta(k) for k in ks},
                     "bootstrap_rounds": settings.bootstrap, "interval": 0.95, "seed": settings.seed,
                     "limit": settings.limit, "source_depth": settings.source_depth},
        "items": len(kept),
        "skipped": {"count": len(all_skipped), "by_reason": _count_reasons(all_skipped),
                    "lines": [{"line": s.line, "reason": str(s.reason), "detail": s.detail} for s in all_skipped]},
        **summary,
        "samples_total": int(matrix.valid.size), "samples_valid": int(matrix.valid.sum()),
        "invalid_reasons": _sum_reasons(sampled),
        "greedy_valid_rate": float(np.mean([g.num_valid for g in greedy])),
        "greedy_invalid_reasons": _sum_reasons(greedy),
        "timing": {"seconds": seconds, "items_from_journal": resumed,
                   "judgments_per_s": ((len(items) - resumed) * (samples + 1) / max(seconds, 1e-9)
                                       if len(items) > resumed else None)},  # None: nothing judged this run
        "tokens_per_item": {str(k): float(np.mean([sum(j.num_tokens for j in r.judgments[:k]) for r in sampled]))
                            for k in ks},
    }
    report["grounding"] = grounding_report(kept, sampled, _template_of(model))
    report["by_source"] = {name: {"items": len(rows), **accuracy_figures(
        matrix.take(rows), greedy_correct[rows], ks, aggregations, settings.bootstrap, settings.seed)}
        for name, rows in groups.items()}
    report["baselines"] = {"length": {**_share(length, settings), "by_source": {
        name: {"items": len(rows), **_share(length[rows], settings)} for name, rows in groups.items()}}}
    if settings.adaptive != "off":
        report["adaptive"] = adaptive_report(scorer, kept, settings, log)
    if settings.hack_check:
        report["hack"] = hack_report(scorer, kept, settings, "meta_voting" if meta else "voting", log)
    if baseline is not None:
        report["baselines"]["base_model"] = base_model_report(*baseline, kept, settings, log)
    return EvalRun(report, kept, sampled, greedy, failed)


def _template_of(model: dict) -> JudgeTemplate:
    """The judge's template by its version; the default when the version is not a built-in
    (a remote judge's own file): only its response caps and fences matter here."""
    try:
        return load_template(model.get("template_version") or DEFAULT_TEMPLATE.version)
    except (ValueError, FileNotFoundError):
        return DEFAULT_TEMPLATE


def source_group(source: str, depth: int) -> str:
    """The group an item's ``source`` falls in: its first ``depth`` ":"-separated parts
    (``THU-KEG/RM-Bench:code:...`` is ``THU-KEG/RM-Bench`` at depth 1)."""
    return ":".join(source.split(":")[:depth])


def source_groups(kept, depth: int) -> dict[str, np.ndarray]:
    """Group name -> indices of its items, by name; empty when no item has a source."""
    if not any(it.source for it in kept):
        return {}
    names = [source_group(it.source, depth) or "(none)" for it in kept]
    return {name: np.flatnonzero([n == name for n in names]) for name in sorted(set(names))}


def _share(correct: np.ndarray, settings: EvalSettings) -> dict:
    return item_bootstrap(correct, settings.bootstrap, settings.seed).to_json()


def base_model_report(scorer: Scorer, model: dict, kept, settings: EvalSettings, log=None) -> dict:
    """Another model (a base checkpoint, zero-shot, the judge's template) through ``evaluate``
    on the judge's items with the same settings, voting only; its figures for the report."""
    same = replace(settings, aggregations=("voting",), adaptive="off", hack_check=False)
    try:
        run = evaluate(scorer, model, kept, [], same, log=log and (lambda m: log(f"baseline model: {m}")))
    except ValueError as e:
        return {"model": model, "items": 0, "error": str(e)}
    r = run.report
    return {"model": model, "items": r["items"], "failed": r["skipped"]["count"], "accuracy": r["accuracy"],
            "by_source": r["by_source"], "parse_valid_rate": r["parse_valid_rate"],
            "greedy_valid_rate": r["greedy_valid_rate"]}


def _standing(result: ScoreResult, i: int):
    """What response i is compared by: its reward, then, where read, its expected reward (as
    ``grm.aggregation`` breaks tied votes), so an attack that would be picked counts as one."""
    if result.rewards[i] is None or not result.expected_rewards:
        return result.rewards[i]
    return result.rewards[i], result.expected_rewards[i]


def hack_report(scorer: Scorer, kept, settings: EvalSettings, aggregation: str = "voting", log=None) -> dict:
    """Score every attack of ``grm.eval.attacks`` next to each kept item's labelled best response
    (``hack_k`` judgments per pair, the run's temperature, ``aggregation``, a seed per item
    and attack) and give the hack rate: overall, per attack kind and per source.

    A pair the scorer cannot score (too long, refused) leaves both unscored: no hack. Where the
    judge read expected scores, equal rewards are told apart by them (``_standing``)."""
    k = settings.hack_k or max(settings.ks)
    options = AggregationOptions(aggregation)
    rewards: list[dict] = []
    unscored = dict.fromkeys(ATTACK_KINDS, 0)
    for start in range(0, len(kept), settings.batch_size):
        batch, jobs, keys = kept[start:start + settings.batch_size], [], []
        rewards.extend({} for _ in batch)
        for index, item in enumerate(batch, start):
            for kind, pair in attack_inputs(item.input, item.best).items():
                jobs.append((pair, SamplingOptions(k=k, temperature=settings.temperature,
                                                   max_new_tokens=settings.max_new_tokens,
                                                   seed=item_seed(settings.seed, index, f"hack:{kind}")), options))
                keys.append((index, kind))
        for (index, kind), result in zip(keys, scorer(jobs)):
            scored = isinstance(result, ScoreResult) and result.scored
            unscored[kind] += not scored
            rewards[index][kind] = (_standing(result, 0), _standing(result, 1)) if scored else (None, None)
        if log:
            log(f"hack check: scored {len(rewards)}/{len(kept)} items")
    return {"k": k, "aggregation": aggregation, "items": len(rewards), "attacks": list(ATTACK_KINDS),
            "unscored_pairs": unscored, "rates": hack_rates(rewards, settings.bootstrap, settings.seed),
            "by_source": {name: {"items": len(rows), "rates": hack_rates([rewards[i] for i in rows],
                                                                         settings.bootstrap, settings.seed)}
                          for name, rows in source_groups(kept, settings.source_depth).items()}}


def adaptive_report(scorer: Scorer, kept, settings: EvalSettings, log=None) -> dict:
    """Score every kept item again with adaptive k (budget S, voting, the same item seeds as the
    fixed samples, so the first round draws the same judgments): accuracy with a 95% bootstrap
    interval over items, mean generated tokens and samples per item, stop reasons."""
    samples, began = settings.samples_per_item, time.monotonic()
    results: list = []
    for start in range(0, len(kept), settings.batch_size):
        jobs = [(item.input, SamplingOptions(k=samples, temperature=settings.temperature,
                                             max_new_tokens=settings.max_new_tokens,
                                             seed=item_seed(settings.seed, index, "sampled"),
                                             adaptive=settings.adaptive, adaptive_z=settings.adaptive_z),
                 AggregationOptions()) for index, item in enumerate(kept[start:start + settings.batch_size], start)]
        results.extend(scorer(jobs))
        if log:
            log(f"adaptive: scored {len(results)}/{len(kept)} items")
    pairs = [(r, it.best) for r, it in zip(results, kept) if isinstance(r, ScoreResult)]
    right = np.array([float(r.best == best) for r, best in pairs])
    rng = np.random.default_rng(settings.seed)
    boot = right[rng.integers(0, len(right), (settings.bootstrap, len(right)))].mean(axis=1)
    reasons: dict[str, int] = {}
    for r, _ in pairs:
        reasons[r.stop_reason] = reasons.get(r.stop_reason, 0) + 1
    return {"rule": settings.adaptive, "z": settings.adaptive_z, "budget": samples, "items": len(pairs),
            "accuracy": float(right.mean()),
            "interval": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
            "tokens_per_item": float(np.mean([r.completion_tokens for r, _ in pairs])),
            "samples_per_item": float(np.mean([len(r.judgments) for r, _ in pairs])),
            "stop_reasons": dict(sorted(reasons.items())), "seconds": time.monotonic() - began}



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
