"""grm.grouping: flat rows to GRM inputs and back, with hand-made results."""

from __future__ import annotations

import pytest

from grm.grouping import Row, group_rows, spread_back
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
