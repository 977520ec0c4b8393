"""Drawing verifiable judging tasks: queries with 2 or 3 constraints and near-miss responses.

Each response meets some constraints and narrowly misses others (one word too many, one
word left in lowercase, a list one item short, a sum off by 1 or 2, a look-alike of the
required word, the forbidden word slipped in, "." instead of "?"). Ground truth comes from
the rules (``grm.tasks.rules``), never from the generator's intent: the generator checks
that the two agree, and redraws items whose best score is tied.

Example::

    tasks = generate_tasks(100, seed=0, split="train")
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import grm.seeds as seeds
from grm.tasks.rules import MAX_RESPONSES, SPLITS, Constraint, Kind, Task, split_of, true_score
from grm.tasks.vocabulary import (CATEGORIES, FILLERS, HEADS, KEYWORDS, SUM_PREFIXES, TOPICS,
                                  VERBS)


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
    subject = {"sentence": rng.choice(TOPICS), "list": rng.choice(sorted(CATEGORIES)), "sum": ""}[family]
    pool = list(CATEGORIES[subject]) if family == "list" else list(KEYWORDS)
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
    parts = [rng.choice(HEADS[family]).format(subject=subject, a=a, b=b)]
    parts += [rng.choice(c.instructions()) for c in constraints]
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
    pins, banned = _pins(want, KEYWORDS, rng, difficulty)
    pool = [w for w in FILLERS + KEYWORDS if w not in banned and w not in pins]
    verb = [rng.choice(VERBS)] if n - 2 > len(pins) else []  # "the sea is ..." when there is room
    middle = pins + rng.sample(pool, n - 2 - len(verb) - len(pins))
    rng.shuffle(middle)
    return ["the", q.subject] + verb + middle


def _list_words(q: _Query, want: dict, rng: random.Random, difficulty: float) -> list[str]:
    n = _count(want, Kind.LIST_ITEMS, rng, difficulty, lo=2, hi=9, free=(3, 6))
    pool = CATEGORIES[q.subject]
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
    return rng.choice(SUM_PREFIXES[n - 1]).format(a=a, b=b).split() + [str(value)]


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
    rng = seeds.rng(f"spct-tasks/{split}/{seed}/{num_responses}/{difficulty}")  # one part: named before grm.seeds
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
