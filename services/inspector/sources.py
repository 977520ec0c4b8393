"""Saved files the inspector shows: ``grm eval`` reports with their judgments, GRPO metrics.

``EvalSource`` pairs a ``grm-eval/1`` report (``grm eval --output``) with the judgments
file written beside it (``grm eval --judgments``: one line per scored item with the
item's source line, its labelled best response and its sampled and greedy judgments).
The conversations come from the data the report names (a JSONL path, or a
``synthetic:SPLIT:N[:SEED]`` spec that regenerates the same items); ``data`` overrides
that path when the file has moved. Without the data the items are still shown, without
their text.

``RunSource`` reads the GRPO trainer's ``metrics.jsonl`` afresh on every request, so a
page polling it follows a run in progress; a last line still being written is skipped.

    report = EvalSource.load("report.json", "judgments.jsonl")
    report.wrong()            # items voting@S or greedy got wrong
    report.item_view(3)       # an InputView of the fourth judged item
    RunSource("runs/grpo/metrics.jsonl").records()
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from grm.aggregation import aggregate
from grm.eval.records import load_data
from grm.parsing import parse_judgment
from grm.types import InvalidReason, Judgment, ScoreInput, ScoreResult
from services.inspector.html import esc
from services.inspector.input_view import InputView

EVAL_FORMAT = "grm-eval/"
# What the trainer logs per step (policy/trainer.py and policy/demo.py); curves are drawn
# for the keys present in the file.
RUN_CURVES = (("reward", "mean GRM reward"), ("unscored_fraction", "unscored fraction"),
              ("kl", "KL to the reference"), ("judge_agreement", "judge agreement"),
              ("true_score", "true score"), ("pass_rate", "true pass rate"))


class SourceError(ValueError):
    """A file the inspector cannot use; the message names the file and what is wrong."""


def _judgment(record: dict, n: int) -> Judgment:
    """A judgments-file entry back as a Judgment; principles and critique are re-read from its text."""
    parsed = parse_judgment(record["text"], n) if record.get("text") else None
    reason = record.get("reason")
    try:
        reason = InvalidReason(reason) if reason else None
    except ValueError:
        pass  # a reason this version does not know: keep its name
    return Judgment(text=record.get("text", ""), principles=parsed.principles if parsed else "",
                    critique=parsed.critique if parsed else "",
                    scores=tuple(record["scores"]) if record.get("scores") is not None else None,
                    permutation=tuple(record.get("permutation", ())), reason=reason,
                    meta_score=record.get("meta_score"),
                    expected_scores=tuple(record["expected_scores"]) if record.get("expected_scores") else None)


@dataclass
class EvalItemRecord:
    line: int  # the item's line in the evaluation data
    best: int  # the labelled best response
    sampled: ScoreResult  # voting over all S samples
    greedy: Judgment
    item: ScoreInput | None

    @property
    def voting_correct(self) -> bool:
        return _strictly_top(self.sampled.vote_sums if self.sampled.scored else None, self.best)

    @property
    def greedy_correct(self) -> bool:
        return _strictly_top(self.greedy.scores, self.best)


def _strictly_top(values, best: int) -> bool:
    """Whether ``best`` alone has the highest value (a tie counts as wrong: the report's
    figures break ties at random, a list of items to read should not depend on a draw)."""
    return values is not None and all(v < values[best] for i, v in enumerate(values) if i != best)


@dataclass
class EvalSource:
    name: str
    report: dict
    items: list[EvalItemRecord] = field(default_factory=list)
    data_note: str = ""  # why the conversations are missing, when they are

    @classmethod
    def load(cls, report_path: str, judgments_path: str | None = None, data: str | None = None) -> "EvalSource":
        report = _read_json(report_path)
        if not isinstance(report, dict) or not str(report.get("format", "")).startswith(EVAL_FORMAT):
            raise SourceError(f"{report_path}: not a grm eval report (no \"format\": \"grm-eval/1\")")
        source = cls(Path(report_path).name, report)
        if judgments_path:
            source._load_items(judgments_path, data or report.get("settings", {}).get("data"))
        return source

    def _load_items(self, path: str, data: str | None) -> None:
        by_line, self.data_note = _data_items(data)
        for number, line in enumerate(_read_lines(path), 1):
            try:
                rec = json.loads(line)
                n = len(rec["greedy"]["permutation"])  # N, whether or not the judgment is valid
                sampled = [_judgment(j, n) for j in rec["sampled"]]
                item = by_line.get(rec["line"])
                self.items.append(EvalItemRecord(rec["line"], rec["best"], aggregate(sampled, n),
                                                 _judgment(rec["greedy"], n), item))
            except (KeyError, TypeError, ValueError, IndexError) as e:
                raise SourceError(f"{path}:{number}: not a grm eval judgments line ({type(e).__name__}: {e})") from None

    def wrong(self) -> list[int]:
        """Indexes of the items that voting over every sample, or the greedy judgment, got wrong."""
        return [i for i, it in enumerate(self.items) if not (it.voting_correct and it.greedy_correct)]

    def item_view(self, index: int) -> InputView:
        it = self.items[index]
        verdict = lambda ok: '<span class="ok">right</span>' if ok else '<span class="bad">wrong</span>'  # noqa: E731
        details = [("report", esc(self.name)), ("data line", str(it.line)),
                   ("labelled best", f"response {it.best + 1}"),
                   (f"voting over {len(it.sampled.judgments)} samples", verdict(it.voting_correct)),
                   ("greedy judgment", verdict(it.greedy_correct))]
        return InputView(title=f"{self.name}: item at data line {it.line}", item=it.item, result=it.sampled,
                         details=details, label=it.best, note=self.data_note if it.item is None else "",
                         response_count=len(it.sampled.rewards))


def _data_items(data: str | None) -> tuple[dict[int, ScoreInput], str]:
    """The evaluation data's items by source line, or none and the reason."""
    if not data:
        return {}, "The report does not name its data, so the conversations are not shown."
    try:
        items, _ = load_data(data, limit=None)
    except (ValueError, OSError) as e:
        return {}, f"The evaluation data could not be read ({esc(e)}); pass it with --data to see the conversations."
    return {it.line: it.input for it in items}, ""


class RunSource:
    """A training run's ``metrics.jsonl``, read on every call."""

    def __init__(self, path: str):
        self.path = path
        self.name = str(Path(path).parent.name or Path(path).name)

    def records(self) -> list[dict]:
        out = []
        for line in _read_lines(self.path):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the trainer is still writing this line
            if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
                out.append(record)
        return out

    def series(self) -> dict:
        """The curves a run page draws: steps, then one list per logged metric (None where absent)."""
        records = self.records()
        derived = [dict(r, unscored_fraction=r["unscored"] / r["completions"])
                   if isinstance(r.get("unscored"), (int, float)) and r.get("completions") else r for r in records]
        curves = [{"key": key, "label": label, "values": [_number(r.get(key)) for r in derived]}
                  for key, label in RUN_CURVES if any(_number(r.get(key)) is not None for r in derived)]
        return {"steps": [r["step"] for r in records], "curves": curves, "last": records[-1] if records else None}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value else None


def _read_json(path: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: not JSON ({e})") from None


def _read_lines(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror or e})") from None
    return [line for line in text.splitlines() if line.strip()]


def kind_of(path: str) -> str:
    """"report", "judgments" or "metrics", from a file's content; SourceError otherwise."""
    if path.endswith(".json"):
        return "report"
    lines = _read_lines(path)
    try:
        first = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        first = {}
    if isinstance(first, dict) and "sampled" in first:
        return "judgments"
    if isinstance(first, dict) and "step" in first:
        return "metrics"
    raise SourceError(f"{path}: neither a grm eval report (.json), its judgments (lines with \"sampled\") "
                      "nor a training run's metrics (lines with \"step\")")
