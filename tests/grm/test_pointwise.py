"""Pointwise judging (``JudgeTemplate.pointwise``, ``grm.pointwise``): one prompt per response.

A stand-in engine for a trained pointwise judge reads the one answer a prompt shows and
writes a judgment that quotes it and scores it by the number in it, so the merge back to
response order, the labels of the critique lines and the grounding of their quotes can be
checked exactly; the real engine on the tiny model runs the same plans.
"""

from __future__ import annotations

import pytest
import torch

from grm import GenerativeRewardModel, SamplingOptions
from grm.eval.grounding import check_quotes
from grm.pointwise import digit_ids, expected_value, merge, read_expected, relabel, score_position
from grm.templates import load_template, template_from_dict
from grm.testing import ONE_ANSWER as ONE, PointEngine
from grm.transformers_engine import TransformersEngine
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


class ReadingPointEngine(PointEngine):
    """The stand-in writer with a real reader: the tiny model reads the judgments it is shown."""

    def __init__(self, reader: TransformersEngine):
        super().__init__()
        self.tokenizer, self.reader = reader.tokenizer, reader

    def next_token_logprobs(self, sequences, token_ids):
        return self.reader.next_token_logprobs(sequences, token_ids)


def test_the_score_position_is_the_token_after_the_last_box_opener(tiny_model_path):
    tok = TransformersEngine.load(str(tiny_model_path)).tokenizer
    ids = tok("Analysis: \\boxed{2} is quoted.\nScores: \\boxed{7}", add_special_tokens=False).input_ids
    at = score_position(tok, ids)
    assert tok.decode(ids[:at]).endswith("Scores: \\boxed{") and tok.decode(ids[at:]) == "7}"
    assert score_position(tok, tok("Scores: 7", add_special_tokens=False).input_ids) is None
    assert score_position(tok, tok("Scores: \\boxed{", add_special_tokens=False).input_ids) is None


def test_expected_scores_are_read_where_each_score_was_written_and_break_tied_votes(tiny_model_path):
    reader = TransformersEngine.load(str(tiny_model_path))
    grm = GenerativeRewardModel(ReadingPointEngine(reader), POINT)
    item = ScoreInput("Pick one.", ["7 apples", "7 pears, 7 plums"])
    [samples] = grm.sample([grm.plan(item, SamplingOptions(k=2, seed=1))])
    digits = digit_ids(reader.tokenizer)
    for sample in samples:
        assert sample.judgment.scores == (7, 7)
        wanted = []
        for prompt, completion in sample.parts:  # the reference: one full forward per part
            text = completion.text[:completion.text.rindex("{") + 1]
            ids = prompt.ids + tuple(reader.tokenizer(text, add_special_tokens=False).input_ids)
            with torch.no_grad():
                logits = reader.model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
            wanted.append(expected_value(logits[digits].tolist()))
        assert sample.judgment.expected_scores == pytest.approx(wanted, abs=1e-4)
        assert all(1 <= v <= 9 for v in wanted) and wanted[0] != wanted[1]
    means = [sum(s.judgment.expected_scores[i] for s in samples) / 2 for i in range(2)]
    for seed in range(6):  # the written votes tie; the expected rewards decide, whatever the seed
        result = grm.score("Pick one.", list(item.responses), k=2, seed=seed)
        assert result.vote_sums == (14, 14) and result.expected_rewards == pytest.approx(means)
        assert result.best == max(range(2), key=lambda i: means[i])


def test_judgments_that_cannot_be_read_keep_no_expected_scores_and_votes_fall_back_to_the_coin(tiny_model_path):
    reader = TransformersEngine.load(str(tiny_model_path))
    grm = GenerativeRewardModel(ReadingPointEngine(reader), POINT)
    grm.engine.broken = ("broken",)
    result = grm.score("Pick one.", ["3", "broken"], k=2, seed=1)
    assert result.num_valid == 0 and all(j.expected_scores is None for j in result.judgments)
    [samples] = grm.sample([grm.plan(ScoreInput("Pick one.", ["10", "4"]), SamplingOptions(k=1))])
    assert samples[0].judgment.scores == (10, 4) and samples[0].judgment.expected_scores is None  # 10: not one token
    assert read_expected(reader, [[]], [()]) == [[]]
    plain = GenerativeRewardModel(PointEngine(), POINT).score("Pick one.", ["5", "5"], k=2, seed=1)
    assert plain.expected_rewards == () and all(j.expected_scores is None for j in plain.judgments)
    picks = {GenerativeRewardModel(PointEngine(), POINT).score("Pick one.", ["5", "5"], k=2, seed=s).best
             for s in range(12)}
    assert picks == {0, 1}  # without a reading, a tie is still the seeded coin
