"""The inspector without a browser: the recorder's bounds, escaping, files, the form's checks.

The pages themselves are driven in a real browser in test_inspector_browser.py; here the
parts are checked one by one against real files (a ``grm eval`` report and its judgments
written by the bundled GRM, in tests/services/data/inspector) and a real servicer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grm.aggregation import aggregate
from grm.types import Judgment, ScoreInput
from services.convert import result_to_proto
from services.inspector import Inspector, RecentRequests
from services.inspector.html import esc, json_data
from services.inspector.input_view import InputView, render_input, used_samples
from services.inspector.sources import EvalSource, RunSource, SourceError, kind_of
from services.inspector.try_form import FormError, parse_form

DATA = Path(__file__).parent / "data" / "inspector"
EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


class Context:
    """What the recorder reads from a grpc.aio ServicerContext."""

    def __init__(self, peer: str = "ipv4:127.0.0.1:5000", metadata=()):
        self._peer, self._metadata = peer, metadata

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self):
        return self._metadata


def result(k: int = 3, text: str = "Specific Criteria:\nbe right\nAnalysis:\nfine\nScores: \\boxed{5, 7}"):
    """k valid judgments of two responses and one invalid one."""
    judgments = [Judgment(text, "be right", "fine", (5 + s, 7), (1, 0) if s % 2 else (0, 1)) for s in range(k)]
    judgments.append(Judgment("no box", "", "", None, (0, 1), reason="no_scores"))
    return aggregate(judgments, 2)


def test_recorder_keeps_the_last_n_and_their_judgments():
    recent = RecentRequests(capacity=3)
    item = ScoreInput("Name a prime.", ["7", "9"])
    for i in range(5):
        recent.add([item], [result_to_proto(result())], Context(), ["input"], latency_ms=float(i))
    assert len(recent) == 3 and [r.id for r in recent.latest()] == [5, 4, 3]
    assert recent.get(2) is None and recent.get(4).latency_ms == 3.0
    rec = recent.get(5)
    assert rec.input() == item and rec.result().judgments[0].principles == "be right"
    assert rec.num_valid == 3 and rec.num_invalid == 1 and rec.rewards == (6.0, 7.0)


def test_recorder_is_bounded_in_bytes_and_skips_failed_items():
    recent = RecentRequests(capacity=1000, max_bytes=2000)
    item = ScoreInput("q", ["x" * 500, "y"])
    for _ in range(10):
        recent.add([item, item], [result_to_proto(result(1, "t")), "an RpcFailure"], Context(),
                   ["items[0]", "items[1]"], 1.0)
    assert recent.bytes <= 2000 and 1 <= len(recent) < 10
    assert all(r.method == "ScoreBatch items[0]" for r in recent.latest())


def test_recorder_names_the_caller_a_front_end_speaks_for():
    recent = RecentRequests(capacity=2)
    recent.add([ScoreInput("q", ["a", "b"])], [result_to_proto(result(1, "t"))],
               Context(metadata=(("grm-caller", "http 10.0.0.2:4000"),)), ["input"], 1.0)
    assert recent.latest()[0].caller == "http 10.0.0.2:4000 via ipv4:127.0.0.1:5000"


def test_untrusted_text_is_escaped_in_every_part_of_the_input_view():
    item = ScoreInput([{"role": "user", "content": EVIL}], [EVIL, "ok"], principles=EVIL, reference=EVIL)
    j = Judgment(EVIL, EVIL, EVIL, None, (0, 1), reason="no_scores")
    html = render_input(InputView("t", item, aggregate([j], 2), details=[("caller", esc(EVIL))]))
    assert "<script>" not in html and "<img" not in html and html.count("&lt;script&gt;") >= 7
    assert "</script>" not in json_data("x", {"a": EVIL}).removesuffix("</script>")


def test_meta_voting_marks_the_samples_the_meta_rm_kept():
    js = [Judgment("t", "", "", (s + 1,), (0,), meta_score=m) for s, m in enumerate([0.2, 0.9, 0.5, 0.9])]
    r = aggregate(js, 1, "meta_voting", k_meta=2)
    assert used_samples(r) == {1, 3} and r.vote_sums == (2 + 4,)


def test_a_judgment_read_for_expected_scores_shows_them_and_they_come_back_from_a_judgments_file(tmp_path):
    j = Judgment("[Answer 1]\nScores: \\boxed{9}", "", "", (9, 9), (0, 1), expected_scores=(7.25, 8.5))
    html = render_input(InputView("t", ScoreInput("q", ["a", "b"]), aggregate([j], 2)))
    assert "Expected scores (the judge's distribution over 1..9): R1: 7.25, R2: 8.50" in html
    assert "Expected scores" not in render_input(InputView("t", ScoreInput("q", ["a", "b"]), result()))
    lines = [json.loads(line) for line in (DATA / "judgments.jsonl").read_text().splitlines()]
    for s in lines[0]["sampled"]:
        s["expected_scores"] = [7.5] * len(s["scores"]) if s["scores"] else None
    (tmp_path / "judgments.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "report.json").write_text((DATA / "report.json").read_text())
    first = EvalSource.load(str(tmp_path / "report.json"), str(tmp_path / "judgments.jsonl")).items[0]
    assert all(j.expected_scores == (7.5,) * len(j.scores) for j in first.sampled.judgments if j.valid)


def test_eval_files_are_read_and_wrong_items_found():
    report = EvalSource.load(str(DATA / "report.json"), str(DATA / "judgments.jsonl"))
    assert len(report.items) == 12 and report.items[0].item is not None  # synthetic data regenerated
    for i in report.wrong():
        it = report.items[i]
        assert not (it.voting_correct and it.greedy_correct)
    first = report.items[0]
    assert first.sampled.num_valid == len(first.sampled.judgments) == 4
    assert first.sampled.judgments[0].principles.startswith("1. The answer")  # re-read from the text
    assert kind_of(str(DATA / "report.json")) == "report" and kind_of(str(DATA / "judgments.jsonl")) == "judgments"


def test_bad_files_are_refused_with_the_file_named(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(SourceError, match="x.json: not a grm eval report"):
        EvalSource.load(str(bad))
    lines = tmp_path / "j.jsonl"
    lines.write_text('{"sampled": 3}\n')
    with pytest.raises(SourceError, match="j.jsonl:1: not a grm eval judgments line"):
        EvalSource.load(str(DATA / "report.json"), str(lines))


def test_a_run_is_read_afresh_and_a_half_written_line_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "reward": 5.0, "unscored": 2, "completions": 8, "kl": 0.0}) + "\n")
    run = RunSource(str(path))
    assert run.series()["steps"] == [1]
    with open(path, "a") as f:
        f.write(json.dumps({"step": 2, "reward": None, "unscored": 8, "completions": 8, "kl": 0.1}) + '\n{"step": 3, "rew')
    series = run.series()
    curves = {c["key"]: c["values"] for c in series["curves"]}
    assert series["steps"] == [1, 2] and curves["reward"] == [5.0, None] and curves["unscored_fraction"] == [0.25, 1.0]
    assert "judge_agreement" not in curves  # not logged by this run


def test_the_form_names_a_bad_field():
    with pytest.raises(FormError, match="query: type"):
        parse_form({"query": [" "], "response": ["a"]})
    with pytest.raises(FormError, match="response: type at least one"):
        parse_form({"query": ["q"], "response": ["", " "]})
    with pytest.raises(FormError, match="k: must be an integer, got 'two'"):
        parse_form({"query": ["q"], "response": ["a"], "k": ["two"]})
    item, options = parse_form({"query": ["q"], "system": ["be brief"], "response": ["a", "", "b"], "k": ["3"]})
    assert [m.role for m in item.conversation] == ["system", "user"] and item.responses == ("a", "b")
    assert options["k"] == 3 and options["aggregation"] == "voting"


def test_routes_answer_unknown_pages_and_methods_clearly():
    app = Inspector()
    assert app.respond("GET", "/inspect/recent/7").status == 404
    assert b"Recording is off" in app.respond("GET", "/inspect/recent").body
    assert app.respond("DELETE", "/inspect").status == 405
    assert app.respond("GET", "/inspect/static/../app.py").status == 404
    page = app.respond("GET", "/inspect")
    assert page.status == 200 and "script-src 'self'" in page.headers["Content-Security-Policy"]
