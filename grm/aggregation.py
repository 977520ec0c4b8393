"""Aggregate k parsed judgments into one reward per response: voting and meta-RM voting.

Voting (DeepSeek-GRM, Liu et al. 2025, arXiv 2504.02495; docs/design.md, "Judging and voting"):
``S*_i = sum over valid samples j of S_ij``; summing k integer scores in 1..10 widens
the reward space k-fold, so ties become rare. Meta-RM guided voting sums only the
``k_meta`` valid samples the meta RM rates highest (default ``grm.defaults.default_k_meta(k)``,
half of k, with k counting invalid samples too). Invalid samples are counted by reason and never vote;
they are never turned into a 0 score. The reward for RL is the mean over the samples
used (1..10 scale); with no usable sample a response is "unscored" (reward None).

A pointwise judge on an engine that can read (``grm.pointwise.read_expected``) also gives
each judgment its expected scores: the mean of the judge's score distribution where it
wrote each score. When every used judgment has them, their mean is ``expected_rewards``
(a reward without ties) and tied vote sums are broken by it before the seeded coin.

Example (k=3, n=2, one sample invalid)::

    judgments: scores (8, 5), (6, 7), None (reason wrong_count)
    vote_sums = (14, 12), num_used = 2, rewards = (7.0, 6.0), spread = (1.0, 1.0),
    best = 0, invalid_reasons = {"wrong_count": 1}
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Sequence

from grm.defaults import default_k_meta
from grm.seeds import rng
from grm.types import Aggregation, Judgment, ScoreResult


def aggregate(judgments: Sequence[Judgment], n: int, aggregation: Aggregation = Aggregation.VOTING,
              k_meta: int | None = None, seed: int = 0) -> ScoreResult:
    """Sum the scores of the used judgments (``scores`` already in original order)."""
    aggregation = Aggregation(aggregation)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    valid = [j for j in judgments if j.valid]
    for j in valid:
        if len(j.scores) != n:
            raise ValueError(f"a valid judgment has {len(j.scores)} scores, expected n={n}")
    used = _meta_top(valid, len(judgments), k_meta) if aggregation is Aggregation.META_VOTING else valid
    vote_sums = tuple(sum(j.scores[i] for j in used) for i in range(n))
    read = bool(used) and all(j.expected_scores is not None for j in used)
    expected = tuple(sum(j.expected_scores[i] for j in used) / len(used) for i in range(n)) if read else ()
    if used:
        rewards = tuple(s / len(used) for s in vote_sums)
        spread = tuple(statistics.pstdev([j.scores[i] for j in used]) for i in range(n))
        best = best_index(vote_sums, seed, expected or None)
    else:
        rewards, spread, best = (None,) * n, (None,) * n, None
    # Sorted so that equal results compare and serialize identically.
    reasons = Counter(str(j.reason) if j.reason is not None else "unknown" for j in judgments if not j.valid)
    return ScoreResult(
        rewards=rewards, vote_sums=vote_sums, spread=spread, num_valid=len(valid),
        num_used=len(used), best=best, judgments=tuple(judgments), aggregation=aggregation,
        invalid_reasons=dict(sorted(reasons.items())), expected_rewards=expected,
    )


def _meta_top(valid: list[Judgment], k: int, k_meta: int | None) -> list[Judgment]:
    """The ``k_meta`` valid judgments with the highest meta_score, ties to the earlier sample."""
    k_meta = default_k_meta(k) if k_meta is None else k_meta
    if k_meta < 1:
        raise ValueError(f"k_meta must be >= 1, got {k_meta}")
    for j in valid:
        if j.meta_score is None or math.isnan(j.meta_score):
            raise ValueError("meta voting needs a meta_score on every valid judgment, "
                             f"got {j.meta_score!r}")
    # sorted() is stable, so equal meta scores keep the original sample order.
    ranked = sorted(range(len(valid)), key=lambda i: -valid[i].meta_score)[:k_meta]
    return [valid[i] for i in sorted(ranked)]


def best_index(vote_sums: Sequence[float], seed: int, tie_break: Sequence[float] | None = None) -> int:
    """Index of the largest vote sum. Among tied sums the largest ``tie_break`` (the expected
    rewards, when read) wins; a tie left after that is broken uniformly at random, fixed by ``seed``.

    A fixed tie-break (always the lowest index) would hand position 0 a systematic edge.
    The draw is from ``grm.seeds.rng("grm-best", seed)``.
    """
    if not vote_sums:
        raise ValueError("vote_sums must not be empty")
    top = max(vote_sums)
    tied = [i for i, s in enumerate(vote_sums) if s == top]
    if tie_break is not None and len(tied) > 1:
        tied = [i for i in tied if tie_break[i] == max(tie_break[t] for t in tied)]
    return tied[0] if len(tied) == 1 else rng("grm-best", seed).choice(tied)
