"""Verifiable judging tasks for SPCT: queries with rule-checkable constraints, exact labels.

A task is a query that asks for 2 or 3 things a rule can check (the whole answer in
uppercase, include a word, avoid a word, exactly N words, end with "?", exactly N
comma-separated items, the value of A+B), each with a weight (the weights of a task sum
to 100), and 1-4 candidate responses (2 by default). Each response meets some
constraints and narrowly misses others: one word too many or too few, one word left in
lowercase, a list one item short, a sum off by 1 or 2, the required word swapped for a
look-alike, the forbidden word slipped in, a final "." instead of "?". This is the
small-scale stand-in for the paper's preference data (DESIGN.md section 11).

Ground truth comes from the rules, never from the generator's intent (the generator
checks that the two agree). A response's true score is

    score = round_half_up(1 + 9 * satisfied_weight / 100)      # 0% -> 1, 50% -> 6, 100% -> 10

and items whose best score is tied are regenerated, so ``best`` is unique.

Example::

    task = generate_tasks(1, seed=0, split="train")[0]
    task.query       # "Name some colors. Write 5 items, separated by commas. Put every word in capital letters."
    task.responses   # ("BLUE, BROWN, ORANGE.", "BLACK, PINK, PURPLE, BROWN, RED.")
    task.scores, task.best                                     # (7, 10), 1
    [c.evidence(task.responses[0]) for c in task.constraints]  # ["3 items vs 5 required", "all uppercase"]

Splits: a query's split is fixed by a hash of its text (80% train, 10% validation,
10% test) and each split draws from its own random stream, so the splits never share a
query, whatever seeds are used.
"""

from __future__ import annotations

import hashlib
import random
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


# ---------------------------------------------------------------- generation

_TOPICS = ("sea", "city", "forest", "winter", "river", "garden", "moon", "train", "kitchen",
           "market", "mountain", "village", "desert", "harbor", "library", "bridge")
_KEYWORDS = ("blue", "quiet", "bright", "green", "golden", "cold", "warm", "gentle", "dark",
             "calm", "wild", "silver", "soft", "busy", "small", "brave")  # include/avoid words
_FILLERS = ("very", "so", "still", "always", "often", "today", "again", "now", "here", "really",
            "truly", "and", "also", "just", "quite", "rather", "more", "never")
_VERBS = ("is", "looks", "feels", "seems", "stays", "grows")
_CATEGORIES = {
    "colors": ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink",
               "brown", "gray", "gold"),
    "animals": ("cat", "dog", "horse", "lion", "tiger", "bear", "wolf", "fox", "mouse", "goat",
                "sheep", "deer"),
    "fruits": ("apple", "pear", "plum", "grape", "lemon", "mango", "peach", "cherry", "melon",
               "banana", "lime", "kiwi"),
    "birds": ("owl", "crow", "eagle", "hawk", "duck", "swan", "robin", "finch", "dove", "parrot",
              "goose", "heron"),
    "tools": ("hammer", "saw", "drill", "wrench", "chisel", "ruler", "shovel", "rake", "axe",
              "pliers", "knife", "ladder"),
    "vegetables": ("carrot", "potato", "onion", "pea", "bean", "leek", "kale", "corn", "radish",
                   "celery", "turnip", "beet"),
}
# Phrases put before the number in an A+B answer, by their length in words.
_SUM_PREFIXES = {
    1: ("so", "total", "exactly", "answer"),
    2: ("it is", "that makes", "total is", "sum is"),
    3: ("the sum is", "the answer is", "that makes exactly", "the total is"),
    4: ("{a} plus {b} is", "i think it is", "so the sum is", "the result is exactly"),
    5: ("{a} plus {b} makes exactly", "i am sure it is", "adding {a} and {b} gives"),
    6: ("if you add them you get", "adding {a} and {b} gives exactly", "i believe the sum must be"),
    7: ("when you add them the sum is", "i am quite sure the total is", "{a} and {b} added together make exactly"),
}
_HEADS = {
    "sentence": ("Write a sentence about the {subject}.", "Describe the {subject} in one sentence.",
                 "Say something about the {subject}."),
    "list": ("Name some {subject}.", "List a few {subject}.", "Give me some {subject}."),
    "sum": ("What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}."),
}
# Which constraints each family may add to its own (the first kind, if any, is always present).
_FAMILY_KINDS = {
    "sentence": ((), (Kind.WORD_COUNT, Kind.UPPERCASE, Kind.INCLUDE, Kind.AVOID, Kind.END_QUESTION)),
    "list": ((Kind.LIST_ITEMS,), (Kind.UPPERCASE, Kind.INCLUDE, Kind.AVOID, Kind.END_QUESTION)),
    "sum": ((Kind.SUM,), (Kind.UPPERCASE, Kind.WORD_COUNT, Kind.END_QUESTION)),
}
_WEIGHTS = {
    2: ((50, 50), (60, 40), (40, 60), (70, 30), (30, 70)),
    3: ((40, 30, 30), (30, 40, 30), (30, 30, 40), (50, 30, 20), (20, 30, 50), (30, 20, 50),
        (40, 40, 20), (20, 40, 40), (60, 20, 20), (20, 20, 60)),
}


@dataclass(frozen=True)
class _Query:
    family: str  # "sentence" | "list" | "sum"
    subject: str  # topic (sentence) or category (list); "" for sum
    constraints: tuple[Constraint, ...]
    text: str


def _draw_query(rng: random.Random) -> _Query:
    family = rng.choice(("sentence", "list", "sum"))
    fixed, optional = _FAMILY_KINDS[family]
    kinds = list(fixed) + rng.sample(optional, rng.choice((2, 3)) - len(fixed))
    rng.shuffle(kinds)
    subject = {"sentence": rng.choice(_TOPICS), "list": rng.choice(sorted(_CATEGORIES)), "sum": ""}[family]
    pool = list(_CATEGORIES[subject]) if family == "list" else list(_KEYWORDS)
    words = rng.sample(pool, 2)  # the include word and the avoid word, never the same
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    params = {
        Kind.UPPERCASE: {}, Kind.END_QUESTION: {}, Kind.SUM: {"a": a, "b": b},
        Kind.INCLUDE: {"word": words[0]}, Kind.AVOID: {"word": words[1]},
        Kind.WORD_COUNT: {"n": rng.randint(4, 6) if family == "sum" else rng.randint(6, 10)},
        Kind.LIST_ITEMS: {"n": rng.randint(3, 6)},
    }
    weights = rng.choice(_WEIGHTS[len(kinds)])
    constraints = tuple(Constraint(k, params[k], w) for k, w in zip(kinds, weights))
    parts = [rng.choice(_HEADS[family]).format(subject=subject, a=a, b=b)]
    parts += [rng.choice(_RULES[c.kind].instructions).format(**c.args) for c in constraints]
    return _Query(family, subject, constraints, " ".join(parts))


def _off_count(n: int, lo: int, hi: int, rng: random.Random, near: bool) -> int:
    """A wrong count: off by 1 or 2 for a near miss, by 3 or 4 otherwise; kept inside lo..hi."""
    offsets = (1, 1, 1, 2) if near else (3, 4)
    return rng.choice([n + sign * off for off in offsets for sign in (-1, 1) if lo <= n + sign * off <= hi])


def _count(want: dict, kind: Kind, rng: random.Random, difficulty: float, lo: int, hi: int, free: tuple[int, int]) -> int:
    if kind not in want:
        return rng.randint(*free)
    args, sat = want[kind]
    return args["n"] if sat else _off_count(args["n"], lo, hi, rng, rng.random() < difficulty)


def _pins(want: dict, pool: Sequence[str], rng: random.Random, difficulty: float) -> tuple[list[str], set[str]]:
    """Words that must appear (the required word, the forbidden word when its rule is to
    fail, a look-alike of a missing required word) and words that must not."""
    banned = {want[k][0]["word"] for k in (Kind.INCLUDE, Kind.AVOID) if k in want}
    pins = []
    if Kind.INCLUDE in want:
        (args, sat) = want[Kind.INCLUDE]
        if sat:
            pins.append(args["word"])
        elif rng.random() < difficulty:  # near miss: a word with the same first letter if there is one
            others = [w for w in pool if w not in banned]
            alike = [w for w in others if w[0] == args["word"][0]]
            pins.append(rng.choice(alike or others))
    if Kind.AVOID in want and not want[Kind.AVOID][1]:
        pins.append(want[Kind.AVOID][0]["word"])
    return pins, banned


def _sentence_words(q: _Query, want: dict, rng: random.Random, difficulty: float) -> list[str]:
    n = _count(want, Kind.WORD_COUNT, rng, difficulty, lo=4, hi=12, free=(5, 9))
    pins, banned = _pins(want, _KEYWORDS, rng, difficulty)
    pool = [w for w in _FILLERS + _KEYWORDS if w not in banned and w not in pins]
    verb = [rng.choice(_VERBS)] if n - 2 > len(pins) else []  # "the sea is ..." when there is room
    middle = pins + rng.sample(pool, n - 2 - len(verb) - len(pins))
    rng.shuffle(middle)
    return ["the", q.subject] + verb + middle


def _list_words(q: _Query, want: dict, rng: random.Random, difficulty: float) -> list[str]:
    n = _count(want, Kind.LIST_ITEMS, rng, difficulty, lo=2, hi=9, free=(3, 6))
    pool = _CATEGORIES[q.subject]
    pins, banned = _pins(want, pool, rng, difficulty)
    items = pins + rng.sample([w for w in pool if w not in banned and w not in pins], n - len(pins))
    rng.shuffle(items)
    return items


def _sum_words(q: _Query, want: dict, rng: random.Random, difficulty: float) -> list[str]:
    args, sat = want[Kind.SUM]
    a, b = args["a"], args["b"]
    value = a + b
    if not sat and rng.random() < difficulty:
        value += rng.choice((-2, -1, 1, 2))
    elif not sat:  # a coarse miss: off by ten, or the digits swapped
        swapped = int(str(value)[::-1])
        value = swapped if swapped != value and rng.random() < 0.5 else value + rng.choice((-10, 10))
    n = _count(want, Kind.WORD_COUNT, rng, difficulty, lo=2, hi=8, free=(2, 6))
    return rng.choice(_SUM_PREFIXES[n - 1]).format(a=a, b=b).split() + [str(value)]


_BODIES = {"sentence": _sentence_words, "list": _list_words, "sum": _sum_words}


def _apply_case(words: list[str], want: dict, rng: random.Random, difficulty: float) -> list[str]:
    """Uppercase when that rule is to hold; when it is to fail, leave one word (near miss)
    or the whole answer (coarse miss) out of uppercase."""
    if Kind.UPPERCASE in want and want[Kind.UPPERCASE][1]:
        return [w.upper() for w in words]
    if Kind.UPPERCASE in want and rng.random() < difficulty:
        out = [w.upper() for w in words]
        i = rng.choice([i for i, w in enumerate(words) if sum(c.isalpha() for c in w) >= 2])
        out[i] = rng.choice((words[i].lower(), words[i].capitalize()))
        return out
    if rng.random() < 0.5:
        return words
    return [words[0].capitalize()] + words[1:]


def _make_response(q: _Query, sat: tuple[bool, ...], rng: random.Random, difficulty: float) -> str:
    want = {c.kind: (c.args, s) for c, s in zip(q.constraints, sat)}
    words = _apply_case(_BODIES[q.family](q, want, rng, difficulty), want, rng, difficulty)
    if Kind.END_QUESTION in want:
        end = "?" if want[Kind.END_QUESTION][1] else rng.choice((".", "!", ""))
    else:
        end = rng.choice(("", ".", "."))
    text = (", " if q.family == "list" else " ").join(words) + end
    got = tuple(c.check(text) for c in q.constraints)
    if got != sat:  # the generator's intent and the rules must agree; ground truth is the rules
        raise RuntimeError(f"task generator bug: wanted {sat}, rules say {got} for {text!r} ({q.text!r})")
    return text


def _draw_task(q: _Query, rng: random.Random, num_responses: int, difficulty: float) -> Task | None:
    for _ in range(20):
        sats = [tuple(rng.random() < 0.5 for _ in q.constraints) for _ in range(num_responses)]
        responses = tuple(_make_response(q, sat, rng, difficulty) for sat in sats)
        scores = tuple(true_score(q.constraints, r) for r in responses)
        if scores.count(max(scores)) == 1:
            return Task(q.text, q.constraints, responses, scores, scores.index(max(scores)))
    return None


def generate_tasks(n: int, seed: int, split: str = "train", *, num_responses: int = 2,
                   difficulty: float = 1.0) -> list[Task]:
    """``n`` distinct tasks of ``split``, the same list for the same arguments.

    difficulty: the probability that a violated constraint is violated narrowly (a count
    off by 1-2, one non-uppercase word, a sum off by 1-2, a look-alike of the required
    word); otherwise it is violated coarsely (a count off by 3-4, no uppercase at all,
    a sum off by 10). 1.0 (the default) makes every miss a near miss.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 1 <= num_responses <= MAX_RESPONSES:
        raise ValueError(f"num_responses must be in 1..{MAX_RESPONSES}, got {num_responses}")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    rng = random.Random(f"spct-tasks/{split}/{seed}/{num_responses}/{difficulty}")
    tasks: list[Task] = []
    seen: set[str] = set()
    for _ in range(100 * n + 1000):
        if len(tasks) == n:
            return tasks
        q = _draw_query(rng)
        if q.text in seen or split_of(q.text) != split:
            continue
        task = _draw_task(q, rng, num_responses, difficulty)
        if task is not None:
            seen.add(q.text)
            tasks.append(task)
    if len(tasks) == n:
        return tasks
    raise RuntimeError(f"could only draw {len(tasks)} distinct {split} tasks of the {n} asked")
