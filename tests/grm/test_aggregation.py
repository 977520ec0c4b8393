"""Voting and meta-RM voting with hand-computed values, plus invariants over random cases."""

from __future__ import annotations

import math
import random

import pytest

from grm.aggregation import aggregate, best_index
from grm.types import Aggregation, InvalidReason, Judgment


def J(scores=None, reason=None, meta=None, expected=None) -> Judgment:
    """A judgment with scores in original order (None = invalid with ``reason``)."""
    n = len(scores) if scores else 2
    if scores is None and reason is None:
        reason = InvalidReason.NO_SCORES
    return Judgment(text="", principles="", critique="", scores=scores, permutation=tuple(range(n)),
                    reason=reason, meta_score=meta, expected_scores=expected)


def test_voting_hand_computed():
    r = aggregate([J((8, 5)), J((6, 7)), J((7, 3))], n=2)
    assert r.vote_sums == (21, 15)
    assert r.rewards == (7.0, 5.0)
    # scores 8,6,7 around 7: sqrt(2/3); scores 5,7,3 around 5: sqrt(8/3)
    assert r.spread == pytest.approx((math.sqrt(2 / 3), math.sqrt(8 / 3)))
    assert (r.num_valid, r.num_used, r.best, r.aggregation) == (3, 3, 0, Aggregation.VOTING)
    assert r.invalid_reasons == {} and r.scored
    assert (r.prompt_tokens, r.completion_tokens) == (0, 0)


def test_invalid_samples_excluded_not_zero():
    js = [J((8, 5)), J(None, InvalidReason.WRONG_COUNT), J((6, 7))]
    r = aggregate(js, n=2)
    assert r.vote_sums == (14, 12)
    assert r.rewards == (7.0, 6.0)  # mean over 2 used samples, not diluted by the invalid one
    assert r.spread == (1.0, 1.0)
    assert (r.num_valid, r.num_used, r.best) == (2, 2, 0)
    assert r.invalid_reasons == {"wrong_count": 1}
    assert r.judgments == tuple(js)


def test_all_invalid_is_unscored():
    js = [J(None, InvalidReason.TRUNCATED), J(None, InvalidReason.NO_SCORES), J(None, InvalidReason.TRUNCATED)]
    r = aggregate(js, n=2)
    assert (r.rewards, r.spread, r.vote_sums, r.best) == ((None, None), (None, None), (0, 0), None)
    assert (r.num_valid, r.num_used, r.scored) == (0, 0, False)
    assert r.invalid_reasons == {"no_scores": 1, "truncated": 2}
    assert aggregate([], n=1).rewards == (None,)


def test_single_response_single_sample():
    r = aggregate([J((6,))], n=1)
    assert (r.vote_sums, r.rewards, r.spread, r.best) == ((6,), (6.0,), (0.0,), 0)


def test_meta_voting_default_k_meta():
    # k=4 -> k_meta=2: the samples rated 0.9 (#0) and 0.7 (#3) vote.
    js = [J((9, 1), meta=0.9), J((1, 9), meta=0.1), J((5, 5), meta=0.5), J((7, 3), meta=0.7)]
    r = aggregate(js, n=2, aggregation=Aggregation.META_VOTING)
    assert (r.vote_sums, r.rewards, r.spread) == ((16, 4), (8.0, 2.0), (1.0, 1.0))
    assert (r.num_valid, r.num_used, r.best, r.aggregation) == (4, 2, 0, Aggregation.META_VOTING)
    assert aggregate(js, n=2, aggregation="meta_voting", k_meta=3).vote_sums == (21, 9)
    assert aggregate(js, n=2, aggregation="meta_voting", k_meta=10).vote_sums == (22, 18)


def test_meta_voting_ignores_invalid_even_if_rated_high():
    # k=5 -> k_meta=2, counted over the k samples; invalid ones never vote.
    js = [J(None, InvalidReason.OUT_OF_RANGE, meta=0.99), J((2, 8), meta=0.2), J((4, 6), meta=0.6),
          J((10, 1), meta=0.4), J(None, InvalidReason.NOT_INTEGER)]
    r = aggregate(js, n=2, aggregation=Aggregation.META_VOTING)
    assert (r.vote_sums, r.num_valid, r.num_used) == ((14, 7), 3, 2)
    assert r.invalid_reasons == {"not_integer": 1, "out_of_range": 1}
    assert aggregate(js[:1], n=2, aggregation=Aggregation.META_VOTING).rewards == (None, None)


def test_meta_voting_ties_keep_sample_order():
    js = [J((1, 10), meta=0.5), J((10, 1), meta=0.5), J((5, 5), meta=0.5)]
    assert aggregate(js, n=2, aggregation=Aggregation.META_VOTING, k_meta=2).vote_sums == (11, 11)
    js = [J((5, 5), meta=0.5), J((1, 10), meta=0.8), J((10, 1), meta=0.5)]
    assert aggregate(js, n=2, aggregation=Aggregation.META_VOTING, k_meta=2).vote_sums == (6, 15)


def test_meta_voting_needs_meta_scores():
    js = [J((5, 5), meta=0.5), J((1, 10))]
    with pytest.raises(ValueError, match="meta_score"):
        aggregate(js, n=2, aggregation=Aggregation.META_VOTING)
    with pytest.raises(ValueError, match="meta_score"):
        aggregate([J((5, 5), meta=float("nan"))], n=2, aggregation=Aggregation.META_VOTING)
    with pytest.raises(ValueError, match="k_meta"):
        aggregate(js[:1], n=2, aggregation=Aggregation.META_VOTING, k_meta=0)
    assert aggregate(js, n=2).vote_sums == (6, 15)  # plain voting does not need them


def test_rejects_wrong_score_count():
    with pytest.raises(ValueError, match="expected n=3"):
        aggregate([J((5, 5))], n=3)


def test_best_index_tie_break():
    assert best_index((3, 9, 4), seed=0) == 1
    assert best_index((7, 7, 2), seed=5) == best_index((7, 7, 2), seed=5)
    picks = [best_index((7, 2, 7), seed) for seed in range(200)]
    assert set(picks) == {0, 2}
    assert 60 <= picks.count(0) <= 140  # roughly uniform
    assert {best_index((4, 4, 4), seed) for seed in range(50)} == {0, 1, 2}
    with pytest.raises(ValueError):
        best_index((), seed=0)


def test_aggregate_tie_uses_seed():
    js = [J((5, 6)), J((6, 5))]
    bests = {aggregate(js, n=2, seed=s).best for s in range(40)}
    assert bests == {0, 1}
    assert aggregate(js, n=2, seed=3).best == aggregate(js, n=2, seed=3).best


@pytest.mark.parametrize("aggregation", list(Aggregation))
def test_invariants_random(aggregation):
    rng = random.Random(1)
    for case in range(300):
        n, k = rng.randint(1, 5), rng.randint(1, 12)
        js = [J(tuple(rng.randint(1, 10) for _ in range(n)), meta=rng.choice([0.1, 0.5, 0.9]))
              if rng.random() < 0.7 else J(None, InvalidReason.WRONG_COUNT) for _ in range(k)]
        k_meta = rng.choice([None, 1, 3])
        r = aggregate(js, n, aggregation, k_meta=k_meta, seed=case)
        valid = [j for j in js if j.valid]
        assert r.num_valid == len(valid) and r.num_used <= r.num_valid <= k
        if aggregation is Aggregation.META_VOTING:
            assert r.num_used == min(k_meta or max(1, k // 2), len(valid))
        else:
            assert r.num_used == len(valid)
        assert sum(r.invalid_reasons.values()) == k - len(valid)
        if r.num_used == 0:
            assert r.best is None and all(x is None for x in r.rewards + r.spread)
            continue
        # The used samples: all valid ones, or the top num_used by meta score (earlier first on ties).
        used = sorted(valid, key=lambda j: -j.meta_score)[:r.num_used] if aggregation == "meta_voting" else valid
        assert r.vote_sums == tuple(sum(j.scores[i] for j in used) for i in range(n))
        assert r.rewards == pytest.approx([s / r.num_used for s in r.vote_sums])
        assert all(1 <= x <= 10 for x in r.rewards) and all(x >= 0 for x in r.spread)
        assert r.vote_sums[r.best] == max(r.vote_sums)


def test_tied_votes_are_broken_by_the_expected_rewards_when_every_used_sample_was_read():
    read = [J((9, 9), expected=(7.5, 8.0)), J((8, 8), expected=(7.0, 7.25)), J(None, InvalidReason.TRUNCATED)]
    for seed in range(8):
        r = aggregate(read, n=2, seed=seed)
        assert r.vote_sums == (17, 17) and r.expected_rewards == (7.25, 7.625) and r.best == 1
    assert aggregate([J((9, 8), expected=(7.0, 8.0))], n=2).best == 0  # the votes first: no tie, no reading
    unread = [J((9, 9), expected=(7.5, 8.0)), J((8, 8))]  # one used sample unread: the coin, as before
    assert aggregate(unread, n=2).expected_rewards == ()
    assert {aggregate(unread, n=2, seed=s).best for s in range(12)} == {0, 1}
    assert best_index((5, 5, 5), seed=0, tie_break=(1.0, 2.0, 2.0)) in (1, 2)
    assert {best_index((5, 5, 5), seed=s, tie_break=(1.0, 2.0, 2.0)) for s in range(12)} == {1, 2}
