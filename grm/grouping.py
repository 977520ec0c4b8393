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

Large groups: a GRPO group of G completions may exceed the server's ``max_responses`` (M,
16 by default; G = 32 or 64 is common). ``split_groups`` judges such a group in parts of
at most M responses, and every part starts with the same anchor responses: the group's
first ``min(ANCHORS, M // 2)`` (two for M >= 4, one for M = 2 or 3, so that anchors never
fill more than half a part; none for M = 1, where each response is judged alone on the
absolute scale). ``spread_back`` then makes the parts comparable: each anchor's
reward is its mean over the parts, and every other reward of a part is shifted by the
mean gap between those anchor means and the anchors' rewards in that part, then clipped
to the judge's 1..10 range. So a part the judge happened to grade harshly is lifted by
exactly as much as its anchors were graded below their average, and the G rewards form
one group baseline. A part in which no anchor was scored keeps its rewards as judged
(each judgment still scores on the absolute 1..10 scale). Only ``reward`` is shifted;
``vote_sum``, ``spread`` and ``num_valid`` describe the part the row was judged in.

    parts = split_groups(group_rows(rows_of_40), max_responses=16)  # 3 parts: 2 anchors + 12, 13, 13
    scores = spread_back(parts, outcomes_of_the_parts, total=40)

``strip_end_markers`` removes the end-of-sequence (and padding) markers that a trainer's
decoded text still carries, so the judge never reads them as part of a response.

Pure: no networking; ``services.client`` (``score_rows``) does the calls for every adapter.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, replace
from typing import Sequence

from grm.types import MAX_SCORE, MIN_SCORE, Conversation, Message, ScoreInput, ScoreResult

ANCHORS = 2  # responses shared by every part of a split group (fewer when max_responses < 4)
# End markers that chat models' tokenizers emit (Qwen/ChatML, Llama 2/Mistral, GPT-2/Qwen
# padding, Llama 3 end of turn and end of text, Gemma, Phi-3, DeepSeek); a decoded rollout
# may end in any of them.
END_MARKERS = ("<|im_end|>", "</s>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<eos>",
               "<|end|>", "<\uff5cend\u2581of\u2581sentence\uff5c>")

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
    anchors: int = 0  # > 0: one part of a split group; its first `anchors` rows are in every part


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
    return tuple((m.role, m.content) if isinstance(m, Message) else (m["role"], m["content"]) for m in conversation)


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


def split_groups(groups: Sequence[Group], max_responses: int) -> list[Group]:
    """The groups, each one past ``max_responses`` replaced by its parts (see the module
    docstring): parts of near-equal size that all start with the group's anchor responses."""
    if max_responses < 1:
        raise ValueError(f"max_responses must be >= 1, got {max_responses}")
    out: list[Group] = []
    for g in groups:
        out += [g] if len(g.rows) <= max_responses else _parts(g, max_responses)
    return out


def _parts(group: Group, max_responses: int) -> list[Group]:
    anchors = min(ANCHORS, max_responses // 2)
    rest = list(range(anchors, len(group.rows)))
    count = math.ceil(len(rest) / (max_responses - anchors))
    # Near-equal parts, so that every judgment compares about as many responses.
    chunks = [rest[len(rest) * i // count:len(rest) * (i + 1) // count] for i in range(count)]
    item = group.item
    return [Group(ScoreInput(item.conversation, [item.responses[j] for j in idx], principles=item.principles,
                             reference=item.reference), tuple(group.rows[j] for j in idx), anchors)
            for idx in ([*range(anchors), *chunk] for chunk in chunks)]


def spread_back(groups: Sequence[Group], outcomes: Sequence[ScoreResult | str], total: int) -> list[RowScore]:
    """Per-row scores from one outcome per group: a ``ScoreResult`` or an error message.
    The parts of a split group (``split_groups``) are aligned on their anchors."""
    if len(outcomes) != len(groups):
        raise ValueError(f"outcomes must hold one entry per group ({len(groups)}), got {len(outcomes)}")
    out: list[RowScore | None] = [None] * total
    split: dict[tuple[int, ...], list[tuple[Group, list[RowScore]]]] = {}
    for group, outcome in zip(groups, outcomes):
        scores = _item_scores(group, outcome)
        if group.anchors:  # the parts of one group share their anchor rows, and only they do
            split.setdefault(group.rows[:group.anchors], []).append((group, scores))
            continue
        for row, s in zip(group.rows, scores):
            out[row] = s
    for parts in split.values():
        for row, s in align_parts(parts):
            out[row] = s
    missing = [i for i, s in enumerate(out) if s is None]
    if missing:
        raise ValueError(f"rows {missing[:5]} belong to no group (total={total})")
    return out


def _item_scores(group: Group, outcome: ScoreResult | str) -> list[RowScore]:
    n = len(group.rows)
    if isinstance(outcome, str):
        return [RowScore(None, None, None, 0, n, error=outcome) for _ in group.rows]
    return [RowScore(outcome.rewards[j], outcome.spread[j], outcome.vote_sums[j], outcome.num_valid, n)
            for j in range(n)]


def align_parts(parts: Sequence[tuple[Group, Sequence[RowScore]]]) -> list[tuple[int, RowScore]]:
    """(row, score) for every row of one split group's parts, on one scale (module docstring)."""
    anchors = parts[0][0].anchors
    level = [_mean([scores[j].reward for _, scores in parts if scores[j].scored]) for j in range(anchors)]
    out = []
    for j, row in enumerate(parts[0][0].rows[:anchors]):
        judged = next((scores[j] for _, scores in parts if scores[j].scored), parts[0][1][j])
        out.append((row, replace(judged, reward=level[j])))
    for group, scores in parts:
        gaps = [level[j] - scores[j].reward for j in range(anchors) if scores[j].scored]
        shift = statistics.fmean(gaps) if gaps else 0.0
        out += [(row, replace(s, reward=_clip(s.reward + shift)) if s.scored else s)
                for row, s in zip(group.rows[anchors:], scores[anchors:])]
    return out


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _clip(reward: float) -> float:
    return min(float(MAX_SCORE), max(float(MIN_SCORE), reward))


def strip_end_markers(text: str, markers: Sequence[str] = END_MARKERS) -> str:
    """``text`` without the runs of ``markers`` at its start and at its end.

    Trainers that decode with special tokens kept (OpenRLHF's remote reward client sends
    ``prompt + response`` decoded that way) leave the policy's end-of-sequence marker, and
    padding, around the text; OpenRLHF's own reward servers cut the tokenizer's eos and pad
    tokens off both ends, and so does this. Whitespace between trailing markers (a chat
    template's newline after ``<|im_end|>``) goes with them; markers inside the text stay.

        strip_end_markers("<|endoftext|>2+2? 4<|im_end|>\\n<|endoftext|>")   # -> "2+2? 4"
    """
    alternatives = "|".join(re.escape(m) for m in sorted({m for m in markers if m}, key=len, reverse=True))
    if not alternatives:
        return text
    text = re.sub(f"^(?:{alternatives})+", "", text)
    return re.sub(rf"(?:(?:{alternatives})\s*)+\Z", "", text)

