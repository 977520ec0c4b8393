"""Verifiable judging tasks for SPCT: queries with rule-checkable constraints, exact labels.

A task is a query that asks for 2 or 3 things a rule can check (the whole answer in
uppercase, include a word, avoid a word, exactly N words, end with "?", exactly N
comma-separated items, the value of A+B), each with a weight (the weights of a task sum
to 100), and 1-4 candidate responses (2 by default). Each response meets some
constraints and narrowly misses others: one word too many or too few, one word left in
lowercase, a list one item short, a sum off by 1 or 2, the required word swapped for a
look-alike, the forbidden word slipped in, a final "." instead of "?". This is the
small-scale stand-in for the paper's preference data (docs/design.md, "The small judge").

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

from grm.tasks.generate import generate_tasks
from grm.tasks.rules import (MAX_RESPONSES, RECORD_FORMAT, SPLITS, Constraint, Kind, Task,
                             satisfied_weight, score_from_weight, split_of, task_from_record,
                             task_to_record, true_score)

__all__ = ["MAX_RESPONSES", "RECORD_FORMAT", "SPLITS", "Constraint", "Kind", "Task", "generate_tasks",
           "satisfied_weight", "score_from_weight", "split_of", "task_from_record", "task_to_record",
           "true_score"]
