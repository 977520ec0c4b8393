"""Adaptive k: the stopping rules (hand-computed cases, and a property test against brute
force over every outcome of the samples left) and the judge's rounds (reproducible for a
seed alone or batched; inputs that stop leave the engine batch; round 1 draws the same
samples as fixed k)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grm import GenerativeRewardModel, ScoreInput
from grm.adaptive import StopReason, confident, decided, rounds, stop_reason, vote_sums
from grm.testing import NoisyRuleEngine
from grm.types import AggregationOptions, SamplingOptions


# ---------------------------------------------------------------- the rules by hand

def test_rounds_cover_k_and_grow():
    assert rounds(1) == [(0, 1)]
    assert rounds(4) == [(0, 2), (2, 4)]
    assert rounds(8) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert rounds(16) == [(0, 2), (2, 4), (4, 8), (8, 12), (12, 16)]
    for k in range(1, 70):
        r = rounds(k)
        assert r[0][0] == 0 and r[-1][1] == k and all(a[1] == b[0] for a, b in zip(r, r[1:]))


def test_decided_needs_a_gap_beyond_nine_per_sample_left():
    assert not decided([45, 0], 5)          # gap 45 = 9 * 5: all 1s vs all 10s ties it
    assert decided([46, 0], 5)
    assert not decided([30, 30], 0)         # a tie is never decided
    assert decided([30, 20, 10], 1) and not decided([30, 20, 11], 1)
    assert not decided([80], 0)             # one response: nothing to rank


def test_stop_reasons():
    assert stop_reason("off", [[10, 1]] * 3, 8, 2.0) is None
    assert stop_reason("off", [[10, 1]] * 8, 8, 2.0) is StopReason.BUDGET
    # 6 samples of (10, 1): gap 54 > 9 * 2 samples left
    assert stop_reason("decided", [[10, 1]] * 6, 8, 2.0) is StopReason.DECIDED
    assert stop_reason("decided", [[10, 1]] * 4, 8, 2.0) is None  # 36 = 9 * 4
    # d = 5, 3: mean 4, sd 1.414, 4 >= 2 * 1.414 / sqrt 2 = 2
    assert stop_reason("confident", [[8, 3], [7, 4]], 8, 2.0) is StopReason.CONFIDENT
    # d = 6, -1: mean 2.5, sd 4.95, se 3.5: not confident at z = 2 (nor at 0.8: 2.8)
    assert stop_reason("confident", [[9, 3], [4, 5]], 8, 0.8) is None
    assert stop_reason("confident", [[9, 3], [4, 5]], 8, 0.7) is StopReason.CONFIDENT
    assert stop_reason("confident", [[9, 3], None], 8, 2.0) is None  # one valid sample
    assert stop_reason("confident", [[7], [7], [7]], 8, 2.0) is None  # N = 1 uses all k


def test_confident_reads_leader_and_runner_up_by_vote_sum():
    # sums 15, 14, 4: leader 0, runner-up 1
    assert vote_sums([[5, 4, 1], [5, 5, 2], [5, 5, 1], None], 3) == [15, 14, 4]
    assert not confident([[5, 4, 1], [5, 5, 2], [5, 5, 1]], 2.0)  # d = 1, 0, 0: mean 0.33, se 0.33
    assert confident([[5, 4, 1], [5, 5, 2], [5, 5, 1]], 0.9)


# ---------------------------------------------------------------- property: against brute force

def _strict_order(sums):
    """The ranking as the set of ordered pairs (a above b); a tie puts neither above."""
    return {(a, b) for a in range(len(sums)) for b in range(len(sums)) if sums[a] > sums[b]}


def _ranking_can_change(sums, remaining):
    """Brute force: does any outcome of ``remaining`` samples (each invalid or N scores in
    1..10) change the ranking? Every sample moves each sum independently, so it suffices
    to try each pair's extremes; we enumerate outcomes anyway, over the distinct totals."""
    n = len(sums)
    per_sample = [None] + list(itertools.product(range(1, 11), repeat=n))
    reachable = {tuple([0] * n)}
    for _ in range(remaining):
        reachable = {tuple(t + (s[i] if s else 0) for i, t in enumerate(total))
                     for total in reachable for s in per_sample}
    now = _strict_order(sums)
    return any(_strict_order([a + b for a, b in zip(sums, extra)]) != now for extra in reachable)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_decided_never_stops_a_ranking_that_could_change(data):
    n = data.draw(st.integers(2, 3))
    remaining = data.draw(st.integers(1, 2 if n == 2 else 1))  # none left: the budget stops it
    sums = data.draw(st.lists(st.integers(0, 60), min_size=n, max_size=n))
    # exact: it stops if and only if no outcome of the samples left changes the ranking
    assert decided(sums, remaining) == (not _ranking_can_change(sums, remaining))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.tuples(st.integers(1, 10), st.integers(1, 10))), min_size=1, max_size=6),
       st.integers(1, 2))
def test_stop_reason_decided_is_sound_for_drawn_samples(scores, left):
    """From drawn samples (invalid ones included) to the decision: stop only when no
    outcome of the ``left`` samples still to draw changes the ranking."""
    reason = stop_reason("decided", scores, len(scores) + left, 2.0)
    assert (reason is StopReason.DECIDED) == (not _ranking_can_change(vote_sums(scores, 2), left))


# ---------------------------------------------------------------- the judge's rounds

def _items():
    return [ScoreInput("Pick the biggest.", ["value 9", "value 2"]),     # clear: stops early
            ScoreInput("Pick the biggest.", ["value 5", "value 6"]),     # close: goes on
            ScoreInput("Pick the smallest.", ["value 7", "value 3", "value 1"])]


def test_adaptive_stops_clear_inputs_early_and_they_leave_the_batch():
    engine = NoisyRuleEngine()
    judge = GenerativeRewardModel(engine)
    sampling = SamplingOptions(k=16, seed=3, adaptive="confident")
    results = judge.score_batch(_items(), sampling)
    clear, close = results[0], results[1]
    assert clear.stop_reason == "confident" and len(clear.judgments) < 16 and clear.best == 0
    assert len(close.judgments) > len(clear.judgments)
    assert all(r.stop_reason in ("decided", "confident", "budget") for r in results)
    # one engine call per round; a later call holds no request of an input that stopped
    assert len(engine.calls) == max(_rounds_used(r, 16) for r in results)
    later_prompts = {req.prompt_ids for call in engine.calls[_rounds_used(clear, 16):] for req in call}
    clear_prompts = {p.ids for p in judge.plan(_items()[0], sampling).prompts}
    assert not later_prompts & clear_prompts
    assert sum(j.num_tokens for j in clear.judgments) == clear.completion_tokens


def _rounds_used(result, k):
    return sum(end <= len(result.judgments) for _, end in rounds(k))


def test_adaptive_is_reproducible_alone_or_batched():
    sampling = SamplingOptions(k=16, seed=11, adaptive="confident", adaptive_z=3.0)
    batched = GenerativeRewardModel(NoisyRuleEngine()).score_batch(_items(), sampling)
    for item, together in zip(_items(), batched):
        alone = GenerativeRewardModel(NoisyRuleEngine()).score_batch([item], sampling)[0]
        assert alone == together
    again = GenerativeRewardModel(NoisyRuleEngine()).score_batch(_items(), sampling)
    assert again == batched


def test_first_round_draws_the_fixed_samples_and_off_draws_all_k():
    item = _items()[1]
    fixed = GenerativeRewardModel(NoisyRuleEngine()).score_batch([item], SamplingOptions(k=8, seed=5))[0]
    assert fixed.stop_reason == "" and len(fixed.judgments) == 8
    adaptive = GenerativeRewardModel(NoisyRuleEngine()).score_batch(
        [item], SamplingOptions(k=8, seed=5, adaptive="decided"))[0]
    assert adaptive.judgments[:2] == fixed.judgments[:2]
    assert adaptive.stop_reason == "budget" and len(adaptive.judgments) == 8  # 5 vs 6 is never decided


def test_adaptive_with_meta_voting_is_refused():
    judge = GenerativeRewardModel(NoisyRuleEngine())
    with pytest.raises(ValueError, match="adaptive works with voting only|meta RM"):
        judge.plan(_items()[0], SamplingOptions(adaptive="decided"), AggregationOptions("meta_voting"))


def test_bad_adaptive_options_name_the_field():
    with pytest.raises(ValueError, match="adaptive must be one of off, decided, confident, got 'sometimes'"):
        SamplingOptions(adaptive="sometimes")
    with pytest.raises(ValueError, match=r"adaptive_z must be in \(0, 100\], got 0"):
        SamplingOptions(adaptive_z=0)


def test_eval_reports_adaptive_beside_fixed_k():
    from grm.eval.records import EvalItem
    from grm.eval.report import format_table
    from grm.eval.run import EvalSettings, evaluate, local_scorer

    items = [EvalItem(it, best, line) for line, (it, best) in enumerate(
        [(ScoreInput("Pick the biggest.", ["value 9", "value 2"]), 0),
         (ScoreInput("Pick the biggest.", ["value 1", "value 8"]), 1),
         (ScoreInput("Pick the biggest.", ["value 5", "value 6"]), 1)], 1)]
    judge = GenerativeRewardModel(NoisyRuleEngine())
    settings = EvalSettings("toy", ks=(1, 2, 4, 8), samples=8, bootstrap=50, adaptive="confident")
    report = evaluate(local_scorer(judge), {"id": "noisy"}, items, [], settings).report
    a = report["adaptive"]
    assert a["items"] == 3 and a["budget"] == 8 and sum(a["stop_reasons"].values()) == 3
    assert a["samples_per_item"] < 8 and a["tokens_per_item"] < report["tokens_per_item"]["8"]
    assert 0 < report["tokens_per_item"]["1"] < report["tokens_per_item"]["8"]
    assert "adaptive (confident, z=2, budget 8)" in format_table(report)
