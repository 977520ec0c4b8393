"""Verifiable SPCT tasks: the rules, exact labels, near misses, splits, records, the teacher's
judgments and the rejection rule."""

import json
import math
import random
import re

import pytest

from grm.parsing import parse_judgment, unshuffle
from grm.tasks.vocabulary import SUM_PREFIXES
from grm.tasks import (Constraint, Kind, Task, generate_tasks, split_of, task_from_record,
                               task_to_record)
from spct.teacher import judgment_is_correct, teacher_judgment

TASKS = {split: generate_tasks(300, seed=7, split=split) for split in ("train", "validation", "test")}
TASKS3 = generate_tasks(100, seed=7, split="train", num_responses=3)
ALL = [t for ts in TASKS.values() for t in ts] + TASKS3


# ---------------------------------------------------------------- the rules, on hand-written text

@pytest.mark.parametrize("kind, params, text, ok, evidence", [
    ("uppercase", {}, "THE SEA IS CALM.", True, "all uppercase"),
    ("uppercase", {}, "THE SEA Is CALM.", False, "'Is' is not uppercase"),
    ("uppercase", {}, "the sea is calm", False, "'the' and 3 more not uppercase"),
    ("uppercase", {}, "42", False, "has no letters"),
    ("include", {"word": "blue"}, "THE SEA IS BLUE", True, "contains 'blue'"),
    ("include", {"word": "blue"}, "the sea is blues", False, "lacks 'blue'"),
    ("avoid", {"word": "red"}, "red, green", False, "contains 'red'"),
    ("avoid", {"word": "red"}, "bored, green", True, "lacks 'red'"),
    ("word_count", {"n": 6}, "the sea is calm today.", False, "5 words vs 6 required"),
    ("word_count", {"n": 5}, "the sea is calm today.", True, "5 words vs 5 required"),
    ("end_question", {}, "is it blue?", True, "ends with '?'"),
    ("end_question", {}, "is it blue.", False, "ends with '.' not '?'"),
    ("list_items", {"n": 3}, "red, blue, green.", True, "3 items vs 3 required"),
    ("list_items", {"n": 5}, "red, blue, green, pink", False, "4 items vs 5 required"),
    ("sum", {"a": 12, "b": 30}, "12 plus 30 is 41", False, "12+30=42, answer says 41"),
    ("sum", {"a": 12, "b": 30}, "the sum is 42.", True, "12+30=42, answer says 42"),
    ("sum", {"a": 12, "b": 30}, "no idea", False, "12+30=42, answer says no number"),
])
def test_rule_check_and_evidence(kind, params, text, ok, evidence):
    c = Constraint(kind, params, 50)
    assert c.check(text) is ok
    assert c.evidence(text) == evidence


def test_constraint_validation_and_describe():
    c = Constraint("word_count", {"n": 6}, 40)
    assert c.params == (("n", 6),) and hash(c) == hash(Constraint("word_count", (("n", 6),), 40))
    assert c.describe() == "The answer has exactly 6 words"
    with pytest.raises(ValueError, match="kind"):
        Constraint("rhymes", {}, 50)
    with pytest.raises(ValueError, match="params"):
        Constraint("include", {"n": 3}, 50)
    with pytest.raises(ValueError, match="weight"):
        Constraint("uppercase", {}, 0)


# ---------------------------------------------------------------- generated tasks

def _expected_score(task, text):
    weight = sum(c.weight for c in task.constraints if c.check(text))
    return math.floor(1 + 9 * weight / 100 + 0.5)  # the documented formula, rounded half up


def test_ground_truth_follows_the_rules():
    for task in ALL:
        assert 2 <= len(task.constraints) <= 3
        assert sum(c.weight for c in task.constraints) == 100
        assert len({c.kind for c in task.constraints}) == len(task.constraints)
        assert task.scores == tuple(_expected_score(task, r) for r in task.responses)
        assert all(1 <= s <= 10 for s in task.scores)
        assert task.scores.count(max(task.scores)) == 1 and task.scores[task.best] == max(task.scores)
        assert len(set(task.responses)) == len(task.responses)


def test_every_kind_appears_and_best_is_balanced():
    kinds = {c.kind for t in ALL for c in t.constraints}
    assert kinds == set(Kind)
    firsts = sum(t.best == 0 for t in TASKS["train"])
    assert 0.35 < firsts / len(TASKS["train"]) < 0.65


def _near_miss_offsets(tasks):
    """For each violated constraint, how far the response is from meeting it."""
    offsets = {k: [] for k in Kind}
    for task in tasks:
        for c in task.constraints:
            for text in task.responses:
                if c.check(text):
                    continue
                p = c.args
                if c.kind == Kind.WORD_COUNT:
                    offsets[c.kind].append(abs(len(text.split()) - p["n"]))
                elif c.kind == Kind.LIST_ITEMS:
                    offsets[c.kind].append(abs(len([x for x in text.split(",") if x.strip(" .?!")]) - p["n"]))
                elif c.kind == Kind.SUM:
                    offsets[c.kind].append(abs(int(re.findall(r"[0-9]+", text)[-1]) - (p["a"] + p["b"])))
                elif c.kind == Kind.UPPERCASE:
                    offsets[c.kind].append(sum(any(ch.islower() for ch in w) for w in text.split()))
                elif c.kind == Kind.AVOID:
                    offsets[c.kind].append(re.findall(r"[a-z]+", text.lower()).count(p["word"]))
    return offsets


def test_near_misses_are_near():
    offsets = _near_miss_offsets(ALL)
    for kind in (Kind.WORD_COUNT, Kind.LIST_ITEMS, Kind.SUM):
        assert offsets[kind] and set(offsets[kind]) <= {1, 2}, (kind, set(offsets[kind]))
    assert set(offsets[Kind.UPPERCASE]) == {1}  # exactly one word left out of uppercase
    assert set(offsets[Kind.AVOID]) == {1}  # the forbidden word appears exactly once


def test_low_difficulty_gives_coarse_misses():
    tasks = generate_tasks(200, seed=1, difficulty=0.0)
    offsets = _near_miss_offsets(tasks)
    assert set(offsets[Kind.WORD_COUNT]) <= {3, 4} and set(offsets[Kind.LIST_ITEMS]) <= {3, 4}
    assert min(offsets[Kind.SUM]) >= 9  # off by ten, or the digits swapped
    for task in tasks:  # a coarse uppercase miss: no word of two or more letters is uppercase
        for c in task.constraints:
            words = [w for r in task.responses if c.kind == Kind.UPPERCASE and not c.check(r)
                     for w in r.split() if sum(ch.isalpha() for ch in w) >= 2]
            assert not any(w.isupper() for w in words)


def test_splits_never_share_a_query():
    queries = {split: {t.query for t in ts} for split, ts in TASKS.items()}
    queries["train"] |= {t.query for t in generate_tasks(300, seed=8, split="train")}
    assert not queries["train"] & queries["validation"]
    assert not queries["train"] & queries["test"]
    assert not queries["validation"] & queries["test"]
    for split, ts in TASKS.items():
        assert len({t.task_id for t in ts}) == len(ts)  # distinct within a split too
        assert all(split_of(t.query) == split for t in ts)


def test_generation_is_deterministic():
    assert generate_tasks(50, seed=7, split="test") == TASKS["test"][:50]
    assert generate_tasks(50, seed=9, split="test") != TASKS["test"][:50]
    with pytest.raises(ValueError, match="split"):
        generate_tasks(1, seed=0, split="dev")


def test_record_round_trip():
    for task in ALL[:50] + TASKS3[:10]:
        record = json.loads(json.dumps(task_to_record(task)))
        assert record["conversation"] == [{"role": "user", "content": task.query}]
        assert record["scores"] == list(task.scores) and record["best"] == task.best
        assert task_from_record(record) == task
    bad = task_to_record(TASKS["train"][0])
    bad["scores"] = [s % 10 + 1 for s in bad["scores"]]
    with pytest.raises(ValueError, match="scores"):
        task_from_record(bad)


def test_task_rejects_a_wrong_best():
    t = TASKS["train"][0]
    with pytest.raises(ValueError, match="best"):
        Task(t.query, t.constraints, t.responses, t.scores, best=1 - t.best)


# ---------------------------------------------------------------- the teacher

def test_teacher_judgment_parses_to_the_true_scores():
    rng = random.Random(0)
    for task in ALL:
        permutation = list(range(len(task.responses)))
        rng.shuffle(permutation)
        text = teacher_judgment(task, permutation, rng)
        parsed = parse_judgment(text, len(task.responses))
        assert parsed.reason is None, text
        scores = unshuffle(parsed.scores, permutation)
        assert scores == task.scores
        assert judgment_is_correct(scores, task.scores)
        assert parsed.principles.count("weight") == len(task.constraints)
        assert parsed.critique.startswith("Response 1:")
        if len(task.responses) == 2:
            assert len(text) < 700


def test_teacher_writes_evidence_before_the_verdict():
    task = TASKS["train"][0]
    text = teacher_judgment(task, [1, 0], random.Random(0))
    line = next(l for l in text.splitlines() if l.startswith("Response 1:"))
    first = task.constraints[0]
    assert line.startswith(f"Response 1: {first.evidence(task.responses[1])}, ")
    with pytest.raises(ValueError, match="permutation"):
        teacher_judgment(task, [0, 0], random.Random(0))


# ---------------------------------------------------------------- the rejection rule

@pytest.mark.parametrize("scores, truth, ok", [
    ((8, 3), (7, 4), True),
    ((3, 8), (7, 4), False),
    ((8, 8), (7, 4), False),  # a tie at the top is not a correct ranking
    ((5, 9, 2), (3, 8, 1), True),
    ((1, 9, 5), (3, 8, 1), True),  # only the best must be strictly highest
    ((9, 9, 2), (3, 8, 1), False),
    ((7,), (7,), True),  # one response: the score must equal the label
    ((6,), (7,), False),
    (None, (7, 4), False),  # an invalid judgment is never correct
])
def test_judgment_is_correct(scores, truth, ok):
    assert judgment_is_correct(scores, truth) is ok


def test_judgment_is_correct_rejects_bad_input():
    with pytest.raises(ValueError):
        judgment_is_correct((1, 2, 3), (4, 5))
    with pytest.raises(ValueError, match="unique"):
        judgment_is_correct((1, 2), (5, 5))


def test_sum_prefixes_have_their_declared_length():

    assert all(len(p.split()) == k for k, phrases in SUM_PREFIXES.items() for p in phrases)
