"""grm.grouping: flat rows to GRM inputs and back (large groups in aligned parts), with hand-made
results; and the end markers cut off decoded text."""

from __future__ import annotations

import pytest

from grm.grouping import END_MARKERS, Row, group_rows, split_groups, spread_back, strip_end_markers
from grm.types import ScoreResult

ROWS = [Row("2+2?", "4"), Row("Name a prime.", "7"), Row("2+2?", "5"),
        Row([{"role": "user", "content": "2+2?"}], "22"),  # the same prompt as chat messages
        Row("2+2?", "four", reference="4")]  # another reference: another input


def result(rewards, num_valid=2) -> ScoreResult:
    """A hand-made result: vote sum 2 x reward (two valid samples), spread 0.5 where scored."""
    return ScoreResult(rewards=tuple(rewards), vote_sums=tuple(int(2 * r) if r else 0 for r in rewards),
                       spread=tuple(0.5 if r else None for r in rewards), num_valid=num_valid,
                       num_used=num_valid, best=0, judgments=())


def test_rows_sharing_prompt_and_reference_form_one_input_in_row_order():
    groups = group_rows(ROWS)
    assert [g.rows for g in groups] == [(0, 2, 3), (1,), (4,)]
    assert groups[0].item.responses == ("4", "5", "22") and groups[0].item.query == "2+2?"
    assert groups[2].item.reference == "4" and groups[0].item.reference is None


def test_per_response_gives_one_input_per_row():
    groups = group_rows(ROWS, per_response=True)
    assert [g.rows for g in groups] == [(i,) for i in range(len(ROWS))]
    assert [g.item.responses for g in groups] == [(r.response,) for r in ROWS]


def test_spread_back_puts_each_reward_on_its_row_and_errors_on_theirs():
    groups = group_rows(ROWS)
    scores = spread_back(groups, [result([8.0, 3.0, None]), "INVALID_ARGUMENT: too long", result([6.0])], len(ROWS))
    assert [s.reward for s in scores] == [8.0, None, 3.0, None, 6.0]
    assert [s.group_size for s in scores] == [3, 1, 3, 3, 1]
    assert scores[1].error == "INVALID_ARGUMENT: too long" and scores[1].vote_sum is None and not scores[1].scored
    assert scores[3].error is None and scores[3].num_valid == 2  # judged, but no valid score for it
    assert scores[2].vote_sum == 6 and scores[2].spread == 0.5


def test_spread_back_checks_its_inputs():
    groups = group_rows(ROWS)
    with pytest.raises(ValueError, match="one entry per group"):
        spread_back(groups, ["x"], len(ROWS))
    with pytest.raises(ValueError, match="belong to no group"):
        spread_back(groups, ["x", "y", "z"], len(ROWS) + 1)


# ---------------------------------------------------------------- groups past max_responses

def test_a_group_of_40_is_split_into_parts_of_at_most_16_that_share_two_anchors():
    groups = group_rows([Row("2+2?", str(i)) for i in range(40)])
    parts = split_groups(groups, max_responses=16)
    assert [len(p.rows) for p in parts] == [14, 15, 15] and all(p.anchors == 2 for p in parts)
    assert all(p.rows[:2] == (0, 1) and p.item.responses[:2] == ("0", "1") for p in parts)
    others = [r for p in parts for r in p.rows[2:]]
    assert sorted(others) == list(range(2, 40))  # every other row in exactly one part
    assert all(p.item.query == "2+2?" for p in parts)


def test_groups_within_the_limit_are_left_whole_and_the_limit_is_checked():
    groups = group_rows(ROWS)
    assert split_groups(groups, max_responses=3) == groups
    with pytest.raises(ValueError, match="max_responses must be >= 1, got 0"):
        split_groups(groups, 0)


@pytest.mark.parametrize("limit, anchors, sizes", [(1, 0, [1] * 5), (2, 1, [2] * 4), (3, 1, [3, 3]),
                                                   (4, 2, [3, 4])])
def test_anchors_never_fill_more_than_half_a_part(limit, anchors, sizes):
    parts = split_groups(group_rows([Row("q", str(i)) for i in range(5)]), limit)
    assert [len(p.rows) for p in parts] == sizes and {p.anchors for p in parts} == {anchors}


def test_parts_are_aligned_on_their_anchors():
    """Part 2 was judged 2 points harsher than part 1 (anchors 5, 7 against 7, 9): the anchors
    get their means (6, 8) and each part's other rewards move by the mean anchor gap (-1, +1)."""
    parts = split_groups(group_rows([Row("q", str(i)) for i in range(6)]), max_responses=4)
    assert [p.rows for p in parts] == [(0, 1, 2, 3), (0, 1, 4, 5)]
    scores = spread_back(parts, [result([7.0, 9.0, 4.0, 1.5]), result([5.0, 7.0, 3.0, 9.5])], 6)
    assert [s.reward for s in scores] == [6.0, 8.0, 3.0, 1.0, 4.0, 10.0]  # 0.5 and 10.5 clipped to 1..10
    assert [s.vote_sum for s in scores] == [14, 18, 8, 3, 6, 19]  # as judged, in the row's (first) part
    assert all(s.group_size == 4 for s in scores)


def test_alignment_removes_an_additive_bias_per_part_from_a_group_of_40():
    """A judge that adds a bias per part (0, -1, +1.5) to a true value gives, after alignment,
    every row its true value plus one common offset: the 40 rewards form one scale."""
    true = [2.0 + i % 7 for i in range(40)]
    parts = split_groups(group_rows([Row("q", str(i)) for i in range(40)]), 16)
    biases = [0.0, -1.0, 1.5]
    scores = spread_back(parts, [result([true[r] + b for r in p.rows]) for p, b in zip(parts, biases)], 40)
    offsets = {round(s.reward - t, 9) for s, t in zip(scores, true)}
    assert offsets == {round(sum(biases) / 3, 9)}


def test_a_failed_part_and_unscored_anchors():
    parts = split_groups(group_rows([Row("q", str(i)) for i in range(7)]), max_responses=3)
    assert [p.rows for p in parts] == [(0, 1, 2), (0, 3, 4), (0, 5, 6)]
    outcomes = ["INVALID_ARGUMENT: too long", result([None, 4.0, 5.0]), result([6.0, 2.0, None])]
    scores = spread_back(parts, outcomes, 7)
    assert scores[0].reward == 6.0 and scores[0].error is None  # its one scored judgment
    assert scores[1].error == scores[2].error == "INVALID_ARGUMENT: too long" and scores[1].reward is None
    assert (scores[3].reward, scores[4].reward) == (4.0, 5.0)  # no scored anchor in that part: as judged
    assert (scores[5].reward, scores[6].reward) == (2.0, None)  # unscored stays None, never 0


# ---------------------------------------------------------------- end markers

def test_strip_end_markers_on_a_query_as_openrlhf_sends_it():
    """OpenRLHF decodes prompt + response with special tokens kept: left padding, the policy's
    end-of-turn marker, the template's newline and right padding all come along."""
    prompt, response = "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", "It is 4."
    query = "<|endoftext|><|endoftext|>" + prompt + response + "<|im_end|>\n<|endoftext|><|endoftext|>"
    assert strip_end_markers(query) == prompt + response
    assert strip_end_markers(query)[len(prompt):] == response
    assert strip_end_markers("It is 4.</s>", ["</s>"]) == "It is 4."
    assert strip_end_markers("It is 4.<eos><eos>", ["<eos>"]) == "It is 4."  # a tokenizer's own marker
    assert strip_end_markers("a</s> b\n", ["</s>"]) == "a</s> b\n"  # markers inside, whitespace alone: kept
    assert strip_end_markers("It is 4.</s>", []) == "It is 4.</s>"
    assert set(END_MARKERS) >= {"<|im_end|>", "</s>", "<|endoftext|>", "<|eot_id|>"}
    for gemma_phi_deepseek in ("It is 4.<end_of_turn>\n<eos>", "It is 4.<|end|>", "It is 4.<\uff5cend\u2581of\u2581sentence\uff5c>"):
        assert strip_end_markers(gemma_phi_deepseek) == "It is 4."
