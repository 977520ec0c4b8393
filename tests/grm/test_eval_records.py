"""``grm.eval.records``: the readers on small files per format (pairs, HH dialogues,
listwise, task records), the ``source`` field, the item limit and synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grm.eval.records import load_data, parse_lines
from grm.eval.run import source_group

DATA = Path(__file__).with_name("data")


def read(name: str, limit=None):
    with open(DATA / name, encoding="utf-8") as f:
        return parse_lines(f, limit)


def reasons(skipped) -> list[tuple[int, str]]:
    return [(s.line, str(s.reason)) for s in skipped]


def test_pairs_reader():
    items, skipped = read("pairs.jsonl")
    assert [(it.line, it.best, it.input.responses) for it in items] == [
        (1, 0, ("7", "9")), (2, 0, ("Paris.", "Lyon.")), (7, 0, ("4", "5")), (10, 0, (" Blue.", " I cannot."))]
    assert [(m.role, m.content) for m in items[1].input.conversation] == [
        ("system", "Be brief."), ("user", "Capital of France?")]
    assert [(m.role, m.content) for m in items[3].input.conversation] == [  # an HH prompt string
        ("user", "Hi!"), ("assistant", "Hello."), ("user", "Name a color.")]
    assert items[2].input.query == "2+2?"
    assert reasons(skipped) == [(3, "bad_json"), (4, "missing_field"), (5, "empty_response"),
                                (8, "not_an_object"), (9, "bad_field")]  # line 6 is blank: ignored
    assert skipped[1].detail == "rejected"


def test_hh_reader_splits_the_shared_dialogue():
    items, skipped = read("hh.jsonl")
    assert [it.input.responses for it in items] == [("Paris.", "Berlin, I think."), ("Honey never spoils.", "No.")]
    assert [(m.role, m.content) for m in items[1].input.conversation] == [
        ("user", "Hi!"), ("assistant", "Hello, how can I help?"), ("user", "Tell me a fact.")]
    assert all(it.best == 0 for it in items)
    assert reasons(skipped) == [(3, "dialogue_mismatch"), (4, "empty_response"), (5, "missing_field")]


def test_listwise_reader():
    items, skipped = read("listwise.jsonl")
    assert [(it.line, it.best, it.input.responses) for it in items] == [
        (1, 1, ("3", "9", "5")), (2, 1, ("hi", "hello")), (9, 1, ("x", "y"))]
    assert reasons(skipped) == [(3, "tied_best"), (4, "missing_field"), (5, "bad_best"), (6, "bad_best"),
                                (7, "too_few_responses"), (8, "bad_field"), (10, "missing_field"),
                                (11, "unknown_format")]


def test_task_records_read_as_listwise():
    from grm.tasks import task_from_record

    items, skipped = read("tasks.jsonl")
    assert skipped == []
    with open(DATA / "tasks.jsonl") as f:
        tasks = [task_from_record(json.loads(line)) for line in f]
    assert [(it.input.query, it.input.responses, it.best) for it in items] == [
        (t.query, t.responses, t.best) for t in tasks]
    assert len(items[2].input.responses) == 3


def test_readers_keep_the_source_field():
    items, skipped = read("sourced.jsonl")
    assert skipped == [] and [it.source for it in items] == [
        "demo-a:math:q1", "demo-a:capitals:q2", "demo-b:chat:q3", "demo-b:chat:q4"]
    assert {it.source for it in read("pairs.jsonl")[0]} == {""}
    items, _ = parse_lines(['{"prompt": "q", "chosen": "a", "rejected": "b", "source": 7}'])
    assert items[0].source == ""  # not a string: no source
    assert [source_group("THU-KEG/RM-Bench:code:x:id1", d) for d in (1, 2, 9)] == [
        "THU-KEG/RM-Bench", "THU-KEG/RM-Bench:code", "THU-KEG/RM-Bench:code:x:id1"]


def test_limit_stops_after_n_items_and_synthetic_data():
    items, skipped = read("pairs.jsonl", limit=2)
    assert [it.line for it in items] == [1, 2] and skipped == []
    items, skipped = load_data("synthetic:test:5", None)
    assert len(items) == 5 and skipped == []
    assert [it.input.responses for it in load_data("synthetic:test:5", 2)[0]] == [
        it.input.responses for it in items[:2]]
    with pytest.raises(ValueError, match="synthetic:SPLIT:N"):
        load_data("synthetic:test", None)
