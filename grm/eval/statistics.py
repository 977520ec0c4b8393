"""Accuracy@k with intervals from S sampled judgments per item: the maths of ``grm eval``.

Over plain numpy arrays, free of models and I/O, so it tests in milliseconds: a
``SampleMatrix`` holds the scores of S sampled judgments per item, and
``bootstrap_accuracy`` estimates accuracy@k for voting and meta-RM voting by drawing
k-subsets of the S samples (docs/design.md, "The small judge"; the paper's figures are
voting@k and MetaRM@k, DeepSeek-GRM, Liu et al. 2025, section 5), and ``meta_separation``
measures how well the meta RM orders samples of the same item; ``SampleMatrix.take``
restricts a matrix to some items (one source's), and ``longer_response_correct`` is the
"longer response wins" baseline.

An item counts as correct under a subset when the labelled best response gets the
highest vote sum over the subset's valid samples, a tie broken by the sums of their expected
scores when every one was read, then uniformly at random (as ``grm.aggregation.best_index``
does); with no valid sample in the subset it is wrong.
Meta voting first keeps the ``k_meta = grm.defaults.default_k_meta(k)`` valid samples of the subset that
the meta RM rates highest.

Example (3 items, 2 samples, 2 responses; NaN marks an invalid sample)::

    m = SampleMatrix(scores=np.array([[[8, 5], [6, 7]], [[3, 9], [nan, nan]], [[5, 5], [5, 5]]]),
                     best=np.array([0, 1, 0]))
    bootstrap_accuracy(m, ks=[2], rounds=200)["voting"][0].accuracy
    # item 0: sums 14 > 12, right; item 1: 9 > 3, right; item 2: 10 = 10, right half the time
    # -> about (1 + 1 + 0.5) / 3 = 0.83
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

import grm.defaults as defaults
from grm.types import ScoreResult


@dataclass(frozen=True)
class SampleMatrix:
    """S sampled judgments for each of I items with up to R responses, as arrays."""

    scores: np.ndarray  # [I, S, R] 1..10; NaN for an invalid sample and past an item's last response
    best: np.ndarray  # [I] index of the labelled best response
    meta: np.ndarray | None = None  # [I, S] meta RM rating per sample (finite where the sample is valid)
    shown_at: np.ndarray | None = None  # [I, S] 0-based position at which the best response was shown
    # [I, S, R] expected scores (``Judgment.expected_scores``); NaN where a sample has none
    expected: np.ndarray | None = None

    def __post_init__(self) -> None:
        scores = np.asarray(self.scores, dtype=float)
        if scores.ndim != 3 or 0 in scores.shape:
            raise ValueError(f"scores must be a non-empty [items, samples, responses] array, got shape {scores.shape}")
        best = np.asarray(self.best, dtype=int)
        if best.shape != scores.shape[:1] or not ((0 <= best) & (best < scores.shape[2])).all():
            raise ValueError(f"best must hold one index in 0..{scores.shape[2] - 1} per item, got {best}")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "best", best)
        for name in ("meta", "shown_at"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=float if name == "meta" else int)
                if value.shape != scores.shape[:2]:
                    raise ValueError(f"{name} must have shape {scores.shape[:2]}, got {value.shape}")
                object.__setattr__(self, name, value)
        if self.expected is not None:
            expected = np.asarray(self.expected, dtype=float)
            if expected.shape != scores.shape:
                raise ValueError(f"expected must have shape {scores.shape}, got {expected.shape}")
            object.__setattr__(self, "expected", expected)
        if self.meta is not None and not np.isfinite(self.meta[self.valid]).all():
            raise ValueError("meta must be finite for every valid sample")

    @property
    def valid(self) -> np.ndarray:  # [I, S]; response 0 exists in every item
        return ~np.isnan(self.scores[:, :, 0])

    def take(self, rows) -> "SampleMatrix":
        """The matrix of the items at ``rows`` (indices or a mask), e.g. one source's."""
        meta, shown_at, expected = (None if a is None else a[rows] for a in (self.meta, self.shown_at, self.expected))
        return SampleMatrix(self.scores[rows], self.best[rows], meta, shown_at, expected)


@dataclass(frozen=True)
class Estimate:
    accuracy: float  # fraction in [0, 1]
    lo: float  # percentile interval
    hi: float

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy, "interval": [self.lo, self.hi]}


def predict_best(vote_sums: np.ndarray, rng: np.random.Generator, tie_break: np.ndarray | None = None) -> np.ndarray:
    """[..., R] -> [...] index of the largest sum. Among tied sums the largest ``tie_break``
    wins where it is finite (NaN: not read); a tie left is broken uniformly at random."""
    top = vote_sums == vote_sums.max(axis=-1, keepdims=True)
    if tie_break is not None:
        read = np.isfinite(tie_break).all(axis=-1, keepdims=True)
        among = np.where(top, np.nan_to_num(tie_break, nan=-np.inf), -np.inf)
        top &= ~read | (among == among.max(axis=-1, keepdims=True))
    return np.where(top, rng.random(vote_sums.shape), -1.0).argmax(axis=-1)


def vote_correct(m: SampleMatrix, subsets: np.ndarray, rng: np.random.Generator,
                 k_meta: int | None = None, items: np.ndarray | None = None) -> np.ndarray:
    """[B, J, k] subsets (sample indices, ascending) -> [B, J] whether voting over each
    subset picks the labelled best.

    Slot j holds item j, or ``items[b, j]`` when given (a bootstrap resample of the items).
    With ``k_meta``, only the subset's k_meta valid samples with the highest meta rating
    vote (equal ratings: the lower sample index first, as ``grm.aggregation`` does).
    """
    if items is None:
        items = np.broadcast_to(np.arange(len(m.best)), subsets.shape[:2])
    rows = items[..., None]
    picked = m.scores[rows, subsets]  # [B, J, k, R]
    valid = ~np.isnan(picked[..., 0])  # [B, J, k]
    if k_meta is not None:
        if m.meta is None:
            raise ValueError("meta voting needs SampleMatrix.meta")
        rating = np.where(valid, m.meta[rows, subsets], -np.inf)
        top = np.argsort(-rating, axis=-1, kind="stable")[..., :k_meta]
        keep = np.zeros_like(valid)
        np.put_along_axis(keep, top, True, axis=-1)
        valid &= keep
    sums = np.where(valid[..., None], np.nan_to_num(picked), 0.0).sum(axis=-2)  # [B, J, R]
    missing = np.isnan(m.scores).all(axis=1)  # [I, R] padding (or never validly scored)
    sums = np.where(missing[items], -np.inf, sums)
    tie_break = None
    if m.expected is not None:  # NaN unless every voting sample was read, as in grm.aggregation
        read = m.expected[rows, subsets]  # [B, J, k, R]
        tie_break = np.where(valid[..., None], read, 0.0).sum(axis=-2)
        tie_break = np.where(missing[items], 0.0, tie_break)  # padding: no vote to break
    return (predict_best(sums, rng, tie_break) == m.best[items]) & valid.any(axis=-1)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_accuracy(m: SampleMatrix, ks: Sequence[int], rounds: int = 1000, seed: int = 0,
                       aggregations: Sequence[str] = ("voting",), level: float = 0.95,
                       chunk: int = 64) -> dict[str, list[Estimate]]:
    """Accuracy@k per aggregation (``voting``, ``meta_voting``), one Estimate per k.

    The estimate: each round draws one k-subset per item, and it is the mean correctness
    over all rounds x I draws. With k = S every subset is the whole set, so it is exact
    but for random tie-breaks. The interval: each round also resamples the items with
    replacement, draws a fresh k-subset for every resampled slot (a repeated item gets
    independent draws), and takes the percentile interval of the rounds' accuracies;
    it carries both item and subset noise. Subsets of different k are nested (the first
    k of one random order per slot and round), which keeps the curve smooth in k.
    """
    num_items, num_samples, _ = m.scores.shape
    for k in ks:
        if not 1 <= k <= num_samples:
            raise ValueError(f"k must be in 1..{num_samples} (the samples per item), got {k}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    unknown = set(aggregations) - {"voting", "meta_voting"}
    if unknown:
        raise ValueError(f"aggregations must be voting or meta_voting, got {sorted(unknown)}")
    rng = np.random.default_rng(seed)
    resample = rng.integers(0, num_items, size=(rounds, num_items))  # [B, I] item bootstrap
    total = {(a, k): 0 for a in aggregations for k in ks}
    per_round = {(a, k): np.empty(rounds) for a in aggregations for k in ks}
    for start in range(0, rounds, chunk):
        stop = min(rounds, start + chunk)
        order = rng.random((stop - start, num_items, num_samples)).argsort(axis=-1)
        boot_order = rng.random((stop - start, num_items, num_samples)).argsort(axis=-1)
        for k in ks:
            subsets, boot_subsets = np.sort(order[..., :k], axis=-1), np.sort(boot_order[..., :k], axis=-1)
            for a in aggregations:
                k_meta = defaults.default_k_meta(k) if a == "meta_voting" else None
                total[a, k] += int(vote_correct(m, subsets, rng, k_meta).sum())
                per_round[a, k][start:stop] = vote_correct(m, boot_subsets, rng, k_meta,
                                                           items=resample[start:stop]).mean(axis=1)
    return {a: [Estimate(total[a, k] / (rounds * num_items), *percentile_interval(per_round[a, k], level))
                for k in ks] for a in aggregations}


def item_bootstrap(correct: np.ndarray, rounds: int = 1000, seed: int = 0, level: float = 0.95) -> Estimate:
    """[I] per-item correctness (e.g. greedy) -> mean and percentile interval over item resamples."""
    correct = np.asarray(correct, dtype=float)
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), size=(rounds, len(correct)))].mean(axis=1)
    return Estimate(float(correct.mean()), *percentile_interval(means, level))


def longer_response_correct(responses: Sequence[Sequence[str]], best: Sequence[int]) -> np.ndarray:
    """[I] whether "the longer response wins" picks the labelled best: right only when the
    best response is the unique longest by characters (a tie for the longest is wrong, as an
    unscored item is for the judge)."""
    out = []
    for texts, label in zip(responses, best):
        lengths = [len(t) for t in texts]
        out.append(lengths[label] == max(lengths) and lengths.count(max(lengths)) == 1)
    return np.array(out, dtype=bool)


def position_accuracy(correct: np.ndarray, shown_at: np.ndarray, num_positions: int) -> list[dict]:
    """Accuracy split by the 1-based position at which the best response was shown."""
    correct, shown_at = np.asarray(correct, dtype=float).ravel(), np.asarray(shown_at).ravel()
    return [{"position": p + 1, "accuracy": float(correct[shown_at == p].mean()) if (shown_at == p).any() else None,
             "count": int((shown_at == p).sum())} for p in range(num_positions)]


def matrix_from_results(results: Sequence[ScoreResult], best: Sequence[int], meta: bool = False) -> SampleMatrix:
    """The S judgments of each result (scores in original order) as a SampleMatrix;
    ``meta``: keep the meta RM's ratings (every valid judgment must have one)."""
    num_samples = {len(r.judgments) for r in results}
    if len(num_samples) != 1:
        raise ValueError(f"every result needs the same number of judgments, got {sorted(num_samples)}")
    shape = (len(results), num_samples.pop(), max(len(r.vote_sums) for r in results))
    scores, ratings, expected = np.full(shape, np.nan), np.full(shape[:2], np.nan), np.full(shape, np.nan)
    shown_at = np.zeros(shape[:2], dtype=int)
    for i, (result, label) in enumerate(zip(results, best)):
        for s, j in enumerate(result.judgments):
            if j.valid:
                scores[i, s, :len(j.scores)] = j.scores
            if j.valid and j.expected_scores is not None:
                expected[i, s, :len(j.expected_scores)] = j.expected_scores
            if j.meta_score is not None:
                ratings[i, s] = j.meta_score
            shown_at[i, s] = j.permutation.index(label)
    read = not np.isnan(expected[~np.isnan(scores)]).all()
    return SampleMatrix(scores, np.asarray(best), ratings if meta else None, shown_at, expected if read else None)


def sample_outcomes(m: SampleMatrix) -> np.ndarray:
    """[I, S] per sample: 1 when the labelled best response is strictly on top, 0 when it
    shares the top with another, -1 when another is above it, NaN for an invalid sample."""
    scores = np.where(np.isnan(m.scores), -np.inf, m.scores)
    rows = np.arange(len(m.best))
    best = scores[rows, :, m.best]  # [I, S]
    others = scores.copy()
    others[rows, :, m.best] = -np.inf
    with np.errstate(invalid="ignore"):  # an invalid sample: -inf - -inf
        gap = best - others.max(axis=-1)
    return np.where(m.valid, np.sign(gap), np.nan)


def within_item_auc(rating: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> tuple[float | None, int]:
    """AUC of ``rating`` [I, S] for samples marked ``upper`` against samples marked ``lower``
    ([I, S] masks), counting only pairs from the same item (equal ratings count 1/2).
    Returns (AUC or None when there is no pair, number of pairs)."""
    higher = rating[:, :, None] > rating[:, None, :]  # [I, S, S]
    equal = rating[:, :, None] == rating[:, None, :]
    pairs = upper[:, :, None] & lower[:, None, :]
    count = int(pairs.sum())
    if not count:
        return None, 0
    return float((higher[pairs].sum() + 0.5 * equal[pairs].sum()) / count), count


def meta_separation(m: SampleMatrix) -> dict:
    """How well the meta RM tells samples of the same item apart, which is all guided voting
    uses: right rankings against wrong ones, and untied against tied (a tie at the top
    changes no vote between the tied responses, so spotting ties alone gains nothing)."""
    if m.meta is None:
        raise ValueError("meta_separation needs SampleMatrix.meta")
    outcome = sample_outcomes(m)
    rating = np.where(m.valid, m.meta, np.nan)
    right_wrong, n_rw = within_item_auc(rating, outcome == 1, outcome == -1)
    untied_tied, n_ut = within_item_auc(rating, np.abs(outcome) == 1, outcome == 0)
    return {"right_vs_wrong_auc": right_wrong, "right_vs_wrong_pairs": n_rw,
            "untied_vs_tied_auc": untied_tied, "untied_vs_tied_pairs": n_ut,
            "share": {name: float((outcome[m.valid] == v).mean()) if m.valid.any() else None
                      for name, v in (("right", 1), ("tied", 0), ("wrong", -1))}}


def accuracy_figures(m: SampleMatrix, greedy_correct: np.ndarray, ks: Sequence[int],
                     aggregations: Sequence[str] = ("voting",), rounds: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """A report's ``accuracy`` entry: per aggregation one {k, accuracy, interval} per k, and
    ``greedy`` (``greedy_correct`` is [I]); for all items or any subset (``SampleMatrix.take``)."""
    curves = bootstrap_accuracy(m, ks, rounds, seed, aggregations, level)
    accuracy = {a: [{"k": k, **e.to_json()} for k, e in zip(ks, curve)] for a, curve in curves.items()}
    accuracy["greedy"] = item_bootstrap(greedy_correct, rounds, seed, level).to_json()
    return accuracy


def summarize(m: SampleMatrix, greedy_correct: np.ndarray, greedy_shown_at: np.ndarray, ks: Sequence[int],
              aggregations: Sequence[str] = ("voting",), rounds: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict:
    """The figures of a report: accuracy@k per aggregation and greedy (with intervals),
    the parse-valid rate, and accuracy by the position at which the best response was shown
    (voting@1, i.e. each sample on its own, and greedy; ``greedy_*`` are [I])."""
    num_items, num_samples, num_positions = m.scores.shape
    alone = np.broadcast_to(np.arange(num_samples)[:, None, None], (num_samples, num_items, 1))
    single = vote_correct(m, alone, np.random.default_rng([seed, 1])).T  # [I, S]
    report = {
        "accuracy": accuracy_figures(m, greedy_correct, ks, aggregations, rounds, seed, level),
        "parse_valid_rate": float(m.valid.mean()),
        "position_bias": {"voting@1": position_accuracy(single, m.shown_at, num_positions),
                          "greedy": position_accuracy(greedy_correct, greedy_shown_at, num_positions)},
    }
    if m.meta is not None:
        report["meta_rm"] = meta_separation(m)
    return report
