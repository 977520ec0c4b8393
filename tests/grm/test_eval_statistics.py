"""``grm.eval.statistics``: accuracy@k and bootstrap maths with hand-computed values and
invariants, meta voting and the meta RM's separation, intervals, positions, and the
"longer response wins" baseline.

Hand-computed matrix used below (2 responses; NaN = an invalid sample):

    item 0, best 0: (8,5) (6,7) (7,3) invalid
    item 1, best 1: (2,9) (3,8) (9,2) (4,6)
    item 2, best 0: (5,5) invalid invalid invalid

Expected accuracy over all k-subsets (a tie counts 1/2: a uniform random tie-break):
    k=1: item 0 2/4, item 1 3/4, item 2 (1/2)/4            -> (0.5 + 0.75 + 0.125) / 3 = 0.458333
    k=2: item 0 5/6 (only {1,3} loses), item 1 3.5/6 ({a,c} ties; {b,c}, {c,d} lose),
         item 2 1.5/6 (3 pairs hold the tied sample)       -> (10/6) / 3 = 0.555556
    k=3: item 0 4/4, item 1 3.5/4 ({b,c,d} ties 16-16), item 2 1.5/4 -> 2.25 / 3 = 0.75
    k=4: the whole set: 21-15 right, 18-25 right, 5-5 tie  -> 2.5 / 3 = 0.833333
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from grm.aggregation import aggregate
from grm.eval.statistics import (SampleMatrix, bootstrap_accuracy, item_bootstrap, longer_response_correct,
                                 matrix_from_results, meta_separation, position_accuracy, predict_best,
                                 sample_outcomes, vote_correct)
from grm.types import Aggregation, InvalidReason, Judgment

nan = math.nan
HAND = np.array([
    [[8, 5], [6, 7], [7, 3], [nan, nan]],
    [[2, 9], [3, 8], [9, 2], [4, 6]],
    [[5, 5], [nan, nan], [nan, nan], [nan, nan]],
])
HAND_BEST = np.array([0, 1, 0])
HAND_EXPECTED = {1: 1.375 / 3, 2: 10 / 18, 3: 0.75, 4: 2.5 / 3}


def exact_accuracy(m: SampleMatrix, k: int, k_meta: int | None = None) -> float:
    """Reference: every k-subset of every item, a tie credited 1/(tied count)."""
    per_item = []
    for scores, best, meta in zip(m.scores, m.best, m.meta if m.meta is not None else [None] * len(m.best)):
        credit = []
        for subset in itertools.combinations(range(scores.shape[0]), k):
            used = [s for s in subset if not np.isnan(scores[s, 0])]
            if k_meta is not None:
                used = sorted(sorted(used, key=lambda s: -meta[s])[:k_meta])
            if not used:
                credit.append(0.0)
                continue
            sums = scores[used].sum(axis=0)
            sums[np.isnan(scores).all(axis=0)] = -np.inf
            tied = np.flatnonzero(sums == sums.max())
            credit.append(1 / len(tied) if best in tied else 0.0)
        per_item.append(np.mean(credit))
    return float(np.mean(per_item))


def test_hand_computed_accuracy_at_k():
    m = SampleMatrix(HAND, HAND_BEST)
    for k, want in HAND_EXPECTED.items():
        assert exact_accuracy(m, k) == pytest.approx(want)
    est = bootstrap_accuracy(m, [1, 2, 3, 4], rounds=4000, seed=1)["voting"]
    for e, want in zip(est, HAND_EXPECTED.values()):
        assert e.accuracy == pytest.approx(want, abs=0.02)
        assert 0 <= e.lo <= e.accuracy <= e.hi <= 1


def test_k_equal_to_samples_is_exact_without_ties():
    m = SampleMatrix(HAND[:2], HAND_BEST[:2])
    (e,) = bootstrap_accuracy(m, [4], rounds=50, seed=3)["voting"]
    assert (e.accuracy, e.lo, e.hi) == (1.0, 1.0, 1.0)
    # and voting over the whole set agrees with the judge's own aggregation
    for scores, best in zip(m.scores, m.best):
        js = [Judgment("", "", "", None if np.isnan(s[0]) else tuple(int(v) for v in s), (0, 1),
                       None if not np.isnan(s[0]) else InvalidReason.NO_SCORES) for s in scores]
        assert aggregate(js, 2).best == best


def test_random_tie_break_is_right_half_the_time():
    tie = SampleMatrix(np.array([[[5, 5], [4, 4]]]), np.array([1]))
    wins = [bootstrap_accuracy(tie, [2], rounds=1, seed=s)["voting"][0].accuracy for s in range(400)]
    assert set(wins) == {0.0, 1.0}
    assert np.mean(wins) == pytest.approx(0.5, abs=0.08)
    picks = predict_best(np.array([[3, 7, 7, 7]] * 3000), np.random.default_rng(0))
    assert set(picks) == {1, 2, 3}
    assert np.bincount(picks, minlength=4)[1:] / 3000 == pytest.approx([1 / 3] * 3, abs=0.04)


def test_no_valid_sample_counts_as_wrong():
    m = SampleMatrix(np.full((2, 3, 2), nan), np.array([0, 1]))
    assert bootstrap_accuracy(m, [1, 3], rounds=20)["voting"][1].accuracy == 0.0


def test_meta_voting_keeps_the_top_half_by_meta_score():
    # sample scores and meta ratings; the invalid sample never votes whatever its rating
    scores = np.array([[[9, 1], [1, 9], [8, 2], [2, 8], [nan, nan], [3, 4]]])
    meta = np.array([[0.1, 0.9, 0.2, 0.8, nan, 0.3]])
    plain = SampleMatrix(scores, np.array([0]), meta)  # voting over all 5 valid: 23-24, best 1
    subsets = np.arange(6)[None, None, :]  # k = S = 6, k_meta = 3: samples 1, 3, 5 -> 6-21
    rng = np.random.default_rng(0)
    assert not vote_correct(plain, subsets, rng)[0, 0]
    assert not vote_correct(plain, subsets, rng, k_meta=3)[0, 0]
    flipped = SampleMatrix(scores, np.array([1]), meta)
    assert vote_correct(flipped, subsets, rng, k_meta=3)[0, 0]
    low = SampleMatrix(scores, np.array([0]), 1 - np.nan_to_num(meta, nan=0.5))  # now 0, 2, 5 -> 20-7
    assert vote_correct(low, subsets, rng, k_meta=3)[0, 0]
    assert vote_correct(low, subsets, rng, k_meta=2)[0, 0]  # 0 and 2 -> 17-3


def test_meta_separation_compares_samples_of_the_same_item_only():
    nan = np.nan
    m = SampleMatrix(scores=np.array([[[8, 5], [5, 5], [3, 7], [9, 2]],        # right, tie, wrong, right
                                      [[nan, nan], [2, 6], [6, 2], [4, 4]]]),  # invalid, right, wrong, tie
                     best=np.array([0, 1]),
                     meta=np.array([[0.9, 0.1, 0.5, 0.4], [nan, 0.3, 0.3, 0.35]]))
    assert np.array_equal(sample_outcomes(m), [[1, 0, -1, 1], [nan, 1, -1, 0]], equal_nan=True)
    sep = meta_separation(m)
    # right vs wrong: item 0 (0.9 > 0.5 yes, 0.4 > 0.5 no), item 1 (0.3 = 0.3, half) -> 1.5 / 3;
    # pairing across items would add item 0's rights against item 1's wrong (both above 0.3)
    assert (sep["right_vs_wrong_auc"], sep["right_vs_wrong_pairs"]) == (0.5, 3)
    # untied vs tied: item 0 all three above 0.1, item 1 both below 0.35 -> 3 / 5
    assert (sep["untied_vs_tied_auc"], sep["untied_vs_tied_pairs"]) == (pytest.approx(0.6), 5)
    assert sep["share"] == {"right": pytest.approx(3 / 7), "tied": pytest.approx(2 / 7), "wrong": pytest.approx(2 / 7)}
    with pytest.raises(ValueError, match="meta"):
        meta_separation(SampleMatrix(m.scores, m.best))


def test_bootstrap_matches_exact_enumeration_on_random_matrices():
    rng = np.random.default_rng(7)
    scores = rng.integers(1, 11, size=(6, 5, 3)).astype(float)
    scores[rng.random((6, 5)) < 0.2] = nan
    scores[0, :, 2] = nan  # item 0 has 2 responses only
    meta = np.where(np.isnan(scores[:, :, 0]), nan, rng.random((6, 5)))
    m = SampleMatrix(scores, np.array([0, 1, 2, 0, 1, 2]), meta)
    got = bootstrap_accuracy(m, [1, 2, 3, 5], rounds=6000, seed=2, aggregations=["voting", "meta_voting"])
    for a, k_meta in (("voting", lambda k: None), ("meta_voting", lambda k: max(1, k // 2))):
        for k, e in zip([1, 2, 3, 5], got[a]):
            assert e.accuracy == pytest.approx(exact_accuracy(m, k, k_meta(k)), abs=0.02), (a, k)


def test_meta_voting_at_full_k_matches_the_judge_aggregation():
    rng = np.random.default_rng(11)
    for trial in range(30):
        scores = rng.integers(1, 11, size=(6, 2))
        metas = rng.permutation(6) / 6  # distinct ratings
        js = [Judgment("", "", "", tuple(int(v) for v in s), (0, 1), meta_score=float(r))
              for s, r in zip(scores, metas)]
        result = aggregate(js, 2, Aggregation.META_VOTING)
        if result.vote_sums[0] == result.vote_sums[1]:
            continue
        m = matrix_from_results([result], [result.best], meta=True)
        assert vote_correct(m, np.arange(6)[None, None, :], rng, k_meta=3)[0, 0]


def test_intervals_and_positions():
    e = item_bootstrap(np.array([1, 1, 0, 0] * 25), rounds=2000, seed=0)
    assert e.accuracy == 0.5 and 0.35 < e.lo < 0.5 < e.hi < 0.65
    assert item_bootstrap(np.ones(10), rounds=100).to_json() == {"accuracy": 1.0, "interval": [1.0, 1.0]}
    rows = position_accuracy(np.array([1, 0, 1, 1]), np.array([0, 0, 1, 1]), 3)
    assert rows == [{"position": 1, "accuracy": 0.5, "count": 2}, {"position": 2, "accuracy": 1.0, "count": 2},
                    {"position": 3, "accuracy": None, "count": 0}]


def test_longer_response_wins_baseline():
    responses = [["aa", "b"], ["a", "bb"], ["ab", "cd"], ["a", "bbb", "ccc"], ["a", "bbb", "cc"]]
    # right, wrong (shorter), tie (wrong), tied for the longest (wrong), unique longest of 3
    assert longer_response_correct(responses, [0, 0, 0, 1, 1]).tolist() == [True, False, False, False, True]
    assert longer_response_correct([["\u00e9t\u00e9", "abc"]], [0]).tolist() == [False]  # characters, not bytes


def test_matrix_take_keeps_the_chosen_items():
    m = SampleMatrix(HAND, HAND_BEST, np.arange(12.0).reshape(3, 4), np.zeros((3, 4), dtype=int))
    part = m.take(np.array([2, 0]))
    np.testing.assert_array_equal(part.scores, HAND[[2, 0]])
    assert part.best.tolist() == [0, 0] and part.meta[:, 0].tolist() == [8.0, 0.0] and part.shown_at.shape == (2, 4)
    assert SampleMatrix(HAND, HAND_BEST).take([True, False, True]).meta is None


def test_matrix_from_results_and_checks():
    js = [Judgment("", "", "", (3, 9), (1, 0), meta_score=0.7),
          Judgment("", "", "", None, (0, 1), InvalidReason.WRONG_COUNT)]
    m = matrix_from_results([aggregate(js, 2)], [1], meta=True)
    np.testing.assert_array_equal(m.scores, [[[3, 9], [nan, nan]]])
    np.testing.assert_array_equal(m.shown_at, [[0, 1]])  # response 1 shown first in sample 0
    assert m.meta[0, 0] == 0.7 and np.isnan(m.meta[0, 1])
    with pytest.raises(ValueError, match="k must be in 1..2"):
        bootstrap_accuracy(m, [3])
    with pytest.raises(ValueError, match="best must"):
        SampleMatrix(HAND, np.array([0, 2, 0]))
    with pytest.raises(ValueError, match="meta must be finite"):
        SampleMatrix(HAND, HAND_BEST, np.full((3, 4), nan))


def test_tied_votes_are_broken_by_the_expected_scores_as_the_judge_does():
    scores = np.array([[[9, 9], [8, 8]], [[9, 9], [nan, nan]], [[7, 7], [7, 7]]])
    expected = np.array([[[7.0, 7.5], [7.0, 7.0]], [[7.9, 7.1], [nan, nan]], [[7.0, 7.5], [nan, nan]]])
    m = SampleMatrix(scores=scores, best=np.array([1, 0, 1]), expected=expected)
    correct = vote_correct(m, np.tile(np.arange(2), (1, 3, 1)), np.random.default_rng(0))[0]
    assert correct[:2].tolist() == [True, True]  # item 2: sample 2 unread, so the coin decides
    coin = [vote_correct(m, np.tile(np.arange(2), (1, 3, 1)), np.random.default_rng(s))[0, 2] for s in range(16)]
    assert set(coin) == {True, False}
    assert bootstrap_accuracy(m.take([0, 1]), ks=[2], rounds=50)["voting"][0].accuracy == 1.0
    judgments = [Judgment("", "", "", (9, 9), (0, 1), expected_scores=(7.0, 7.5)), Judgment("", "", "", (8, 8), (0, 1))]
    built = matrix_from_results([aggregate(judgments, 2)], best=[1])
    assert np.isnan(built.expected[0, 1]).all() and built.expected[0, 0].tolist() == [7.0, 7.5]
    assert matrix_from_results([aggregate(judgments[1:], 2)], best=[1]).expected is None
