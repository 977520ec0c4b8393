"""Pointwise judging (``JudgeTemplate.pointwise``, ``grm.pointwise``): one prompt per response.

A stand-in engine for a trained pointwise judge reads the one answer a prompt shows and
writes a judgment that quotes it and scores it by the number in it, so the merge back to
response order, the labels of the critique lines and the grounding of their quotes can be
checked exactly; the real engine on the tiny model runs the same plans.
"""

from __future__ import annotations


import pytest

from grm import GenerativeRewardModel, SamplingOptions
from grm.eval.grounding import check_quotes
from grm.pointwise import merge, relabel
from grm.templates import load_template, template_from_dict
from grm.testing import ONE_ANSWER as ONE, PointEngine
from grm.types import AggregationOptions, InvalidReason, Judgment, ScoreInput, ValidationError

POINT = load_template("grm-english-point-v1")


def test_each_response_is_judged_alone_and_the_scores_come_back_in_response_order():
    engine = PointEngine()
    grm = GenerativeRewardModel(engine, POINT)
    responses = ["value 3", "value 9", "value 5"]
    result = grm.score("Pick the biggest.", responses, k=4, seed=2)
    assert [r.n for r in engine.requests] == [4, 4, 4]  # one prompt per response, every sample from each
    assert result.rewards == (3.0, 9.0, 5.0) and result.vote_sums == (12, 36, 20) and result.best == 1
    assert result.num_valid == 4
    for j in result.judgments:
        assert j.scores == (3, 9, 5) and j.permutation == (0, 1, 2)
        assert j.critique.splitlines() == [f'Answer {i}: "{r}" is sized.' for i, r in enumerate(responses, 1)]
        assert check_quotes(j.critique, responses).grounded == 3  # each quote checked against its own answer
        assert j.principles.startswith("For Answer 1:\n1. Bigger is better")
    plan = grm.plan(ScoreInput("Pick.", responses), SamplingOptions(k=4))
    assert [p.permutation for p in plan.prompts] == [(0,), (1,), (2,)]
    assert plan.cost[1] == 12  # sequences held: k per response


def test_a_sample_with_any_unscored_part_is_unscored_and_never_a_zero():
    grm = GenerativeRewardModel(PointEngine(broken=("value 9",)), POINT)
    result = grm.score("Pick.", ["value 3", "value 9"], k=3)
    assert result.num_valid == 0 and result.rewards == (None, None)
    assert {j.reason for j in result.judgments} == {InvalidReason.NO_SCORES}


def test_meta_voting_and_given_orders_are_refused_with_the_reason():
    grm = GenerativeRewardModel(PointEngine(), POINT)
    item = ScoreInput("Pick.", ["1", "2"])
    with pytest.raises(ValidationError, match=r"aggregation.method META_VOTING .*\(pointwise\)"):
        grm.plan(item, SamplingOptions(k=2), AggregationOptions("meta_voting", 1))
    with pytest.raises(ValueError, match="one response a prompt"):
        grm.plan(item, SamplingOptions(k=1), permutations=[(1, 0)])


def test_shared_principles_are_drafted_once_for_one_empty_answer_and_continued_by_every_response():
    engine = PointEngine()
    grm = GenerativeRewardModel(engine, POINT)
    result = grm.score_batch([ScoreInput("Pick.", ["value 2", "value 7"])],
                             SamplingOptions(k=2, shared_principles=True, seed=1))[0]
    draft, *rest = engine.requests
    assert ONE.findall(engine.tokenizer.decode(list(draft.prompt_ids))) == [("1", "")]
    assert [ONE.findall(engine.tokenizer.decode(list(r.prompt_ids)))[0][1] for r in rest] == ["value 2", "value 7"]
    for r in rest:  # each continues after its own prompt from the drafted principles
        assert "Bigger is better" in engine.tokenizer.decode(list(r.prompt_ids)).split("#### Output ####")[1]
    assert result.rewards == (2.0, 7.0)


def test_relabel_names_the_position_and_merge_keeps_lines_apart():
    assert relabel("**Answer 1**: fine.\nAlso short.", 2) == "Answer 2: fine.\nAnswer 2: Also short."
    assert relabel("Response 1 - vague", 3) == "Answer 3: vague"
    parts = [Judgment("a", "", "Answer 1: ok", (4,), (0,), num_tokens=2),
             Judgment("b", "", "", None, (0,), reason=InvalidReason.TRUNCATED, num_tokens=5)]
    merged = merge(parts)
    assert merged.scores is None and merged.reason is InvalidReason.TRUNCATED and merged.num_tokens == 7
    assert merged.text == "[Answer 1]\na\n\n[Answer 2]\nb" and merged.critique == "Answer 1: ok"


def test_the_pointwise_flag_is_checked_and_travels_with_the_template():
    data = POINT.to_dict()
    assert data["pointwise"] is True and template_from_dict(data) == POINT
    with pytest.raises(ValueError, match="pointwise must be true or false"):
        template_from_dict({**data, "pointwise": "yes"})
    assert load_template("grm-english-v1").pointwise is False


def test_the_real_engine_runs_pointwise_plans_and_leaves_garbage_unscored(tiny_model_path):
    grm = GenerativeRewardModel.load(str(tiny_model_path), template=POINT)
    one = grm.score("Say hi.", ["hi", "hello there"], k=2, max_new_tokens=8, seed=3)
    again = grm.score("Say hi.", ["hi", "hello there"], k=2, max_new_tokens=8, seed=3)
    assert one.rewards == (None, None) and one.num_valid == 0 and len(one.judgments) == 2
    assert [j.text for j in one.judgments] == [j.text for j in again.judgments]
    assert all(j.text.startswith("[Answer 1]\n") and "\n\n[Answer 2]\n" in j.text for j in one.judgments)
