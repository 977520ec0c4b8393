"""The rules of the verifiable judging tasks: constraints a program can check, and exact scores.

A constraint (``Constraint``) is one checkable demand on a response, of a ``Kind``
(uppercase, include or avoid a word, a word count, a final "?", a list length, the value
of A+B), with a weight; a task's weights sum to 100. A response's true score is

    score = round_half_up(1 + 9 * satisfied_weight / 100)      # 0% -> 1, 50% -> 6, 100% -> 10

``Task`` holds a query, its constraints, the responses and their true scores; tasks travel
as ``spct-task/1`` JSON records (``task_to_record`` / ``task_from_record``). A query's split
is fixed by a hash of its text (``split_of``).

Example::

    c = Constraint(Kind.WORD_COUNT, {"n": 6}, weight=100)
    c.describe()                      # "The answer has exactly 6 words"
    c.check("one two three four five six"), c.evidence("one two three four five")
                                      # True, "5 words vs 6 required"
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

try:
    from enum import StrEnum
except ImportError:  # Python 3.10
    from grm.types import StrEnum

SPLITS = ("train", "validation", "test")
RECORD_FORMAT = "spct-task/1"
MAX_RESPONSES = 4


class Kind(StrEnum):
    UPPERCASE = "uppercase"
    INCLUDE = "include"  # params: word
    AVOID = "avoid"  # params: word
    WORD_COUNT = "word_count"  # params: n
    END_QUESTION = "end_question"
    LIST_ITEMS = "list_items"  # params: n
    SUM = "sum"  # params: a, b


# ---------------------------------------------------------------- the rules

_LETTERS = re.compile(r"[A-Za-z]+")
_INTEGER = re.compile(r"[0-9]+")


def _has_word(text: str, word: str) -> bool:
    """Whole-word and case-insensitive: "BLUE" contains blue, "blues" does not."""
    return word.lower() in {w.lower() for w in _LETTERS.findall(text)}


def _not_upper(text: str) -> list[str]:
    return [w for w in text.split() if any(c.islower() for c in w)]


def _items(text: str) -> list[str]:
    return [part for part in text.split(",") if part.strip(" .?!")]


def _last_int(text: str) -> int | None:
    found = _INTEGER.findall(text)
    return int(found[-1]) if found else None


def _upper_evidence(p: dict, text: str) -> str:
    bad = _not_upper(text)
    if not bad:
        return "all uppercase" if _LETTERS.search(text) else "has no letters"
    word = bad[0].strip(".,?!")
    return f"'{word}' is not uppercase" if len(bad) == 1 else f"'{word}' and {len(bad) - 1} more not uppercase"


def _end_evidence(p: dict, text: str) -> str:
    stripped = text.rstrip()
    if not stripped:
        return "is empty"
    return "ends with '?'" if stripped.endswith("?") else f"ends with '{stripped[-1]}' not '?'"


def _sum_evidence(p: dict, text: str) -> str:
    said = _last_int(text)
    return f"{p['a']}+{p['b']}={p['a'] + p['b']}, answer says {'no number' if said is None else said}"


class _Rule(NamedTuple):
    params: tuple[str, ...]  # the parameter names a constraint of this kind carries
    describe: str  # the criterion, formatted with the params
    check: Callable[[dict, str], bool]  # (params, response) -> satisfied?
    evidence: Callable[[dict, str], str]  # (params, response) -> the observable fact
    instructions: tuple[str, ...]  # ways a query asks for it


_RULES: dict[Kind, _Rule] = {
    Kind.UPPERCASE: _Rule(
        (), "The whole answer is in uppercase",
        lambda p, t: bool(_LETTERS.search(t)) and not _not_upper(t), _upper_evidence,
        ("Write the whole answer in uppercase.", "Use capital letters only.",
         "Put every word in capital letters.")),
    Kind.INCLUDE: _Rule(
        ("word",), "The answer uses the word '{word}'",
        lambda p, t: _has_word(t, p["word"]),
        lambda p, t: f"contains '{p['word']}'" if _has_word(t, p["word"]) else f"lacks '{p['word']}'",
        ("Use the word '{word}'.", "Include the word '{word}'.", "Make sure the word '{word}' appears.")),
    Kind.AVOID: _Rule(
        ("word",), "The answer does not use the word '{word}'",
        lambda p, t: not _has_word(t, p["word"]),
        lambda p, t: f"contains '{p['word']}'" if _has_word(t, p["word"]) else f"lacks '{p['word']}'",
        ("Do not use the word '{word}'.", "Avoid the word '{word}'.", "Never write the word '{word}'.")),
    Kind.WORD_COUNT: _Rule(
        ("n",), "The answer has exactly {n} words",
        lambda p, t: len(t.split()) == p["n"],
        lambda p, t: f"{len(t.split())} words vs {p['n']} required",
        ("Use exactly {n} words.", "The answer must be exactly {n} words long.", "Write exactly {n} words.")),
    Kind.END_QUESTION: _Rule(
        (), "The answer ends with a question mark",
        lambda p, t: t.rstrip().endswith("?"), _end_evidence,
        ("End with a question mark.", "Finish the answer with a question mark.",
         "The last character must be '?'.")),
    Kind.LIST_ITEMS: _Rule(
        ("n",), "The answer lists exactly {n} comma-separated items",
        lambda p, t: len(_items(t)) == p["n"],
        lambda p, t: f"{len(_items(t))} items vs {p['n']} required",
        ("Give exactly {n} items separated by commas.", "List exactly {n} of them, comma-separated.",
         "Write {n} items, separated by commas.")),
    Kind.SUM: _Rule(
        ("a", "b"), "The answer gives {a}+{b} correctly",
        lambda p, t: _last_int(t) == p["a"] + p["b"], _sum_evidence,
        ("Give the result of {a}+{b} in digits.", "Write the correct total in digits.",
         "Answer with the sum as a number.")),
}


@dataclass(frozen=True)
class Constraint:
    """One rule-checkable demand of a query. ``params`` accepts a dict; it is stored sorted."""

    kind: str  # a Kind value
    params: tuple[tuple[str, Any], ...]  # (name, value) pairs, e.g. (("n", 6),)
    weight: int  # percent; the weights of one task sum to 100

    def __post_init__(self) -> None:
        if self.kind not in set(Kind):
            raise ValueError(f"Constraint.kind must be one of {[str(k) for k in Kind]}, got {self.kind!r}")
        kind = Kind(self.kind)
        params = tuple(sorted(dict(self.params).items()))
        names = tuple(name for name, _ in params)
        if names != tuple(sorted(_RULES[kind].params)):
            raise ValueError(f"Constraint.params for {kind} must name {_RULES[kind].params}, got {names}")
        if not (isinstance(self.weight, int) and 1 <= self.weight <= 100):
            raise ValueError(f"Constraint.weight must be an int in 1..100, got {self.weight!r}")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "params", params)

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.params)

    def describe(self) -> str:
        """The criterion in words, e.g. "The answer has exactly 6 words"."""
        return _RULES[self.kind].describe.format(**self.args)

    def check(self, text: str) -> bool:
        return _RULES[self.kind].check(self.args, text)

    def evidence(self, text: str) -> str:
        """The observable fact the verdict rests on, e.g. "5 words vs 6 required"."""
        return _RULES[self.kind].evidence(self.args, text)

    def instructions(self) -> tuple[str, ...]:
        """The ways a query may ask for this constraint, parameters filled in."""
        return tuple(i.format(**self.args) for i in _RULES[self.kind].instructions)


def score_from_weight(satisfied_weight: int) -> int:
    """``1 + 9 * w / 100`` rounded half up, in integers: 0 -> 1, 30 -> 4, 50 -> 6, 100 -> 10."""
    return 1 + (9 * satisfied_weight + 50) // 100


def satisfied_weight(constraints: Sequence[Constraint], text: str) -> int:
    return sum(c.weight for c in constraints if c.check(text))


def true_score(constraints: Sequence[Constraint], text: str) -> int:
    return score_from_weight(satisfied_weight(constraints, text))


@dataclass(frozen=True)
class Task:
    """A query, its constraints and N responses with their true scores (checked on construction)."""

    query: str
    constraints: tuple[Constraint, ...]
    responses: tuple[str, ...]  # [N]
    scores: tuple[int, ...]  # [N] true scores, 1..10
    best: int  # index of the unique highest score

    def __post_init__(self) -> None:
        for name in ("constraints", "responses", "scores"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if sum(c.weight for c in self.constraints) != 100:
            raise ValueError(f"Task constraint weights must sum to 100, got {[c.weight for c in self.constraints]}")
        if not 1 <= len(self.responses) <= MAX_RESPONSES:
            raise ValueError(f"Task.responses must hold 1..{MAX_RESPONSES} responses, got {len(self.responses)}")
        truth = tuple(true_score(self.constraints, r) for r in self.responses)
        if self.scores != truth:
            raise ValueError(f"Task.scores {self.scores} disagree with the rules, which give {truth}")
        top = max(truth)
        if truth.count(top) != 1 or self.best not in range(len(truth)) or truth[self.best] != top:
            raise ValueError(f"Task.best must be the index of the unique highest score in {truth}, got {self.best}")

    @property
    def task_id(self) -> str:
        """A stable id: the first 16 hex digits of sha256(query)."""
        return hashlib.sha256(self.query.encode()).hexdigest()[:16]


def split_of(query: str) -> str:
    """The split a query belongs to, from a hash of its text: 80% train, 10% validation, 10% test."""
    bucket = int.from_bytes(hashlib.sha256(query.encode()).digest()[:8], "big") % 10
    return "train" if bucket < 8 else SPLITS[bucket - 7]


# ---------------------------------------------------------------- records

def task_to_record(task: Task) -> dict:
    """A JSON-able dict. ``conversation``/``responses``/``scores``/``best`` make it a generic
    preference record; ``constraints`` lets ``task_from_record`` rebuild and re-check the task."""
    return {
        "format": RECORD_FORMAT,
        "task_id": task.task_id,
        "conversation": [{"role": "user", "content": task.query}],
        "responses": list(task.responses),
        "scores": list(task.scores),
        "best": task.best,
        "constraints": [{"kind": str(c.kind), "params": dict(c.params), "weight": c.weight}
                        for c in task.constraints],
    }


def task_from_record(record: dict) -> Task:
    users = [m["content"] for m in record["conversation"] if m["role"] == "user"]
    if not users:
        raise ValueError("record.conversation holds no user turn")
    task = Task(query=users[-1],
                constraints=tuple(Constraint(c["kind"], c["params"], c["weight"]) for c in record["constraints"]),
                responses=tuple(record["responses"]), scores=tuple(record["scores"]), best=record["best"])
    if record.get("task_id", task.task_id) != task.task_id:
        raise ValueError(f"record.task_id {record['task_id']!r} does not match its query ({task.task_id})")
    return task
