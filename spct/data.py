"""Training data for SPCT: labelled judging items, preference-data loading, token examples.

Every stage of the pipeline works on ``LabeledItem``s: a ``ScoreInput`` plus the label the
correctness rule needs (the best response, and the true scores when known). They come
from our verifiable tasks (``items_from_tasks``; the teacher can also write judgments
for them) or from a JSONL preference file (``load_preference_data``), one record a line::

    {"conversation" | "messages": [{"role", "content"}...] | "query": str,
     "responses": [str, ...], "best": int | "scores": [int, ...],
     "judgment": str (optional, a correct judgment with responses in the given order)}
    {"prompt": str | [messages], "chosen": str, "rejected": str}

An ``Example`` is what the trainers eat: the judge prompt's token ids, rendered by the
SAME functions the judge uses at inference (``build_judge_content`` + ``encode_prompt``),
and the judgment's token ids followed by EOS; the loss covers the judgment only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from policy.logprobs import Example  # noqa: F401 (re-exported: the SPCT stages build Examples)
from grm.eval.splits import SPLITS, check_split, record_prompt, split_of
from grm.prompts import build_judge_content, encode_prompt
from grm.templates import JudgeTemplate, load_template
from grm.types import ScoreInput
from grm.tasks import Task, generate_tasks
from spct.teacher import judgment_is_correct, teacher_judgment

# The template every stage renders prompts with, stored beside every checkpoint
# (grm.judge.save_template) so the judge serves the model with the text it learned.
# The compact one: the default's ~2,200 characters of instructions would triple the
# tokens of each training example for a model that cannot read them anyway.
SPCT_TEMPLATE: JudgeTemplate = load_template("grm-compact-v1")


@dataclass(frozen=True)
class LabeledItem:
    item: ScoreInput
    best: int  # index of the labelled best response (for N == 1: 0)
    scores: tuple[int, ...] | None = None  # [N] true scores, when the data has them
    task: Task | None = None  # the verifiable task, when the teacher can judge it
    judgment: str | None = None  # a correct judgment from the data, responses in the given order


def is_correct(scores: Sequence[int] | None, labeled: LabeledItem) -> bool:
    """The SPCT rule (``teacher.judgment_is_correct``) against the data's label.

    With true scores, the rule runs on them; with only a best index, the best response
    must get a score strictly above every other one (the same rule for N >= 2).
    """
    if labeled.scores is not None:
        return judgment_is_correct(scores, labeled.scores)
    if scores is None:
        return False
    return all(scores[labeled.best] > s for i, s in enumerate(scores) if i != labeled.best)


def items_from_tasks(tasks: Sequence[Task]) -> list[LabeledItem]:
    return [LabeledItem(ScoreInput(t.query, t.responses), t.best, t.scores, t) for t in tasks]


def load_preference_data(path: str | Path, split: str | None = None) -> list[LabeledItem]:
    """Read a JSONL preference file (formats in the module docstring); errors name the line.

    ``split`` ("train" or "validation") keeps only the records whose prompt falls in that
    split (``grm.eval.splits``: by prompt, so no prompt is on both sides)."""
    if split is not None:
        check_split(split)
    items = [item for item, prompt in _read_records(path) if split is None or split_of(prompt) == split]
    if not items:
        raise ValueError(f"{path}: no records" + (f" in the {split} split" if split else ""))
    return items


def load_preference_splits(path: str | Path) -> dict[str, list[LabeledItem]]:
    """Every record of a JSONL preference file, by split (``grm.eval.splits``), read in one pass;
    a split may be empty, the file may not."""
    splits: dict[str, list[LabeledItem]] = {name: [] for name in SPLITS}
    for item, prompt in _read_records(path):
        splits[split_of(prompt)].append(item)
    if not any(splits.values()):
        raise ValueError(f"{path}: no records")
    return splits


def _read_records(path: str | Path) -> Iterator[tuple[LabeledItem, str | list]]:
    """(item, its prompt) per record in file order; an unusable line raises naming it."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                    yield record_item(record), record_prompt(record)
                except (KeyError, TypeError, ValueError) as e:
                    raise ValueError(f"{path}:{number}: {e}") from e


def record_item(r: dict) -> LabeledItem:
    if "chosen" in r:
        return LabeledItem(ScoreInput(r["prompt"], [r["chosen"], r["rejected"]]), best=0)
    conversation = r.get("conversation") or r.get("messages") or r.get("query") or r.get("prompt")
    item = ScoreInput(conversation, r["responses"])
    scores = tuple(int(s) for s in r["scores"]) if r.get("scores") is not None else None
    if scores is not None and len(scores) != len(item.responses):
        raise ValueError(f"'scores' holds {len(scores)} values for {len(item.responses)} responses")
    if r.get("best") is not None:
        best = int(r["best"])
    elif scores is not None:
        best = scores.index(max(scores))
        if len(scores) > 1 and scores.count(max(scores)) > 1:
            raise ValueError("'scores' have no unique best response; give 'best'")
    else:
        raise ValueError("a record needs 'best' or 'scores' (or 'chosen'/'rejected')")
    if not 0 <= best < len(item.responses):
        raise ValueError(f"'best' must index the responses, got {best}")
    return LabeledItem(item, best, scores, judgment=r.get("judgment"))


def make_example(tokenizer, template: JudgeTemplate, item: ScoreInput, permutation: Sequence[int],
                 judgment: str) -> Example:
    """The judge prompt for ``permutation`` and ``judgment`` as the model's reply, + EOS."""
    prompt = encode_prompt(tokenizer, build_judge_content(template, item, permutation))
    target = tokenizer(judgment, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return Example(tuple(prompt), tuple(target))


def teacher_batches(tokenizer, template: JudgeTemplate, items: Sequence[LabeledItem], batch_size: int,
                    seed: int) -> Iterator[list[Example]]:
    """Endless cold-start batches: the teacher's judgment (or the data's) under a random order.

    One batch holds items with the same number of responses, so their prompts share a long
    token prefix (the trainer computes that prefix once per batch, see ``sft.batch_logprobs``).
    """
    rng = random.Random(f"teacher-batches:{seed}")
    by_n: dict[int, list[LabeledItem]] = {}
    for it in items:
        if it.task is not None or it.judgment is not None:
            by_n.setdefault(len(it.item.responses), []).append(it)
    if not by_n:
        raise ValueError("no item has a teacher or a data judgment: cold start needs one")
    sizes, weights = zip(*((n, len(group)) for n, group in sorted(by_n.items())))
    while True:
        group = by_n[rng.choices(sizes, weights)[0]]
        batch = []
        for it in rng.choices(group, k=batch_size):
            n = len(it.item.responses)
            if it.task is not None:
                perm = tuple(rng.sample(range(n), n))
                text = teacher_judgment(it.task, perm, rng)
            else:  # a data judgment refers to the given order: it cannot be shuffled
                perm, text = tuple(range(n)), it.judgment
            batch.append(make_example(tokenizer, template, it.item, perm, text))
        yield batch


def train_items(budget, seed: int) -> list[LabeledItem]:
    """The synthetic training items of a ``spct.config.Budget``: two-response tasks, plus 15%
    as many with three responses and 7% with one."""
    return items_from_tasks(generate_tasks(budget.train_tasks, seed, "train")
                            + generate_tasks(budget.train_tasks * 15 // 100, seed, "train", num_responses=3)
                            + generate_tasks(budget.train_tasks * 7 // 100, seed, "train", num_responses=1))


def read_jsonl(path: Path) -> list[dict]:
    """Every complete line of a JSONL file (a line cut by a crash mid-write is left out)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
