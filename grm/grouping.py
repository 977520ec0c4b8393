"""Flat (prompt, response) rows <-> GRM inputs: the grouping every RL-framework adapter needs.

RL trainers hand a reward function flat lists: G completions per prompt, one row each.
The GRM judges best when it sees a prompt's completions side by side (one input with N
responses, as in the paper's pairwise/listwise setting), so ``group_rows`` folds the rows
that share a prompt (and reference) into one ``ScoreInput`` and remembers where each
response came from; ``spread_back`` maps each input's outcome back onto the rows.

    groups = group_rows([Row("2+2?", "4"), Row("2+2?", "5"), Row("Name a prime.", "7")])
    # -> 2 inputs: ("2+2?", ["4", "5"]) for rows (0, 1), ("Name a prime.", ["7"]) for row (2,)
    rows = spread_back(groups, [result_a, "INVALID_ARGUMENT: ..."], total=3)
    rows[2].reward is None and rows[2].error == "INVALID_ARGUMENT: ..."

Pure: no networking; the adapters (``policy.adapters``, ``services.http_reward``) do the calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from grm.types import ScoreInput, ScoreResult

Conversation = str | Sequence[dict]  # a user turn, or {"role", "content"} messages


@dataclass(frozen=True)
class Row:
    """One completion to score, as a trainer hands it over."""

    conversation: Conversation  # the prompt: text or chat messages
    response: str
    reference: str | None = None  # optional reference answer shown to the judge


@dataclass(frozen=True)
class Group:
    item: ScoreInput  # one GRM input: the shared prompt and its responses
    rows: tuple[int, ...]  # [N] rows[j] = the row index of item.responses[j]


@dataclass(frozen=True)
class RowScore:
    """The outcome for one row. ``reward`` None means unscored; ``error`` says why when the
    item failed outright (no judgment ran), else the judgments ran and none was valid."""

    reward: float | None  # mean score 1..10 over the used judgments
    spread: float | None  # std of this response's scores across judgments
    vote_sum: int | None  # S*_i; None when the item failed
    num_valid: int  # valid judgments of the input this row was part of
    group_size: int  # responses judged together with this one (itself included)
    error: str | None = None  # the item error, when the input was rejected

    @property
    def scored(self) -> bool:
        return self.reward is not None


def conversation_key(conversation: Conversation) -> tuple:
    """A hashable key: equal prompts (text or message lists) give equal keys."""
    if isinstance(conversation, str):
        return ("user", conversation),
    return tuple((m["role"], m["content"]) for m in conversation)


def group_rows(rows: Sequence[Row], *, per_response: bool = False) -> list[Group]:
    """One input per distinct (prompt, reference), responses in row order; or one per row.

    Groups come in order of their first row. ``per_response=True`` judges every response
    alone (pointwise), which costs G times the prompt prefill but keeps a response's reward
    independent of its siblings.
    """
    if per_response:
        return [Group(ScoreInput(r.conversation, [r.response], reference=r.reference), (i,))
                for i, r in enumerate(rows)]
    members: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        members.setdefault((conversation_key(r.conversation), r.reference), []).append(i)
    return [Group(ScoreInput(rows[idx[0]].conversation, [rows[i].response for i in idx],
                             reference=rows[idx[0]].reference), tuple(idx))
            for idx in members.values()]


def spread_back(groups: Sequence[Group], outcomes: Sequence[ScoreResult | str], total: int) -> list[RowScore]:
    """Per-row scores from one outcome per group: a ``ScoreResult`` or an error message."""
    if len(outcomes) != len(groups):
        raise ValueError(f"outcomes must hold one entry per group ({len(groups)}), got {len(outcomes)}")
    out: list[RowScore | None] = [None] * total
    for group, outcome in zip(groups, outcomes):
        n = len(group.rows)
        for j, row in enumerate(group.rows):
            if isinstance(outcome, str):
                out[row] = RowScore(None, None, None, 0, n, error=outcome)
            else:
                out[row] = RowScore(outcome.rewards[j], outcome.spread[j], outcome.vote_sums[j],
                                    outcome.num_valid, n)
    missing = [i for i, s in enumerate(out) if s is None]
    if missing:
        raise ValueError(f"rows {missing[:5]} belong to no group (total={total})")
    return out

