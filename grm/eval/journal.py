"""An evaluation's journal: every item's results appended as they come, so a rerun resumes.

``grm eval --journal FILE`` writes one JSON line per scored item (its sampled and greedy
``ScoreResult``s, or why it could not be scored) right after its batch, keyed by the item's
line in the data file and by the settings that shape its samples (model revision, template,
samples, temperature, max_new_tokens, seed). A rerun with the same settings reads the lines
whose key matches, skips those items and scores the rest; lines of other settings are left
alone and ignored. A line cut by a crash mid-write is ignored too.

Example::

    journal = Journal("eval.journal.jsonl", key)
    journal.done        # {line: (sampled, greedy) | (reason, detail)}
    journal.add(item.line, sampled, greedy)
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from grm.types import Aggregation, InvalidReason, Judgment, ScoreResult


def result_to_json(result: ScoreResult) -> dict:
    return asdict(result)


def result_from_json(data: dict) -> ScoreResult:
    judgments = tuple(Judgment(**{**j, "scores": None if j["scores"] is None else tuple(j["scores"]),
                                  "permutation": tuple(j["permutation"]),
                                  "reason": None if j["reason"] is None else InvalidReason(j["reason"]),
                                  "expected_scores": _tuple(j.get("expected_scores"))})
                      for j in data["judgments"])
    return ScoreResult(**{**data, "rewards": tuple(data["rewards"]), "vote_sums": tuple(data["vote_sums"]),
                          "spread": tuple(data["spread"]), "judgments": judgments,
                          "aggregation": Aggregation(data["aggregation"]),
                          "expected_rewards": tuple(data.get("expected_rewards", ()))})


def _tuple(values):
    return None if values is None else tuple(values)


class Journal:
    """Results of the items already scored under ``key``, and an append-only file for more."""

    def __init__(self, path: str | Path, key: dict):
        self.path = Path(path)
        self.key = json.loads(json.dumps(key, sort_keys=True))
        self.done: dict[int, tuple] = {}
        if self.path.exists():
            for text in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(text)
                except json.JSONDecodeError:
                    continue  # a line cut mid-write
                if row.get("key") != self.key:
                    continue
                if "failed" in row:
                    self.done[row["line"]] = tuple(row["failed"])
                else:
                    self.done[row["line"]] = (result_from_json(row["sampled"]), result_from_json(row["greedy"]))

    def add(self, line: int, sampled: ScoreResult, greedy: ScoreResult) -> None:
        self._write({"line": line, "key": self.key, "sampled": result_to_json(sampled),
                     "greedy": result_to_json(greedy)})

    def add_failed(self, line: int, reason: str, detail: str) -> None:
        self._write({"line": line, "key": self.key, "failed": [str(reason), detail]})

    def _write(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
