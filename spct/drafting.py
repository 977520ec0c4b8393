"""The draft stage of the English judge: cold-start pieces for every training pair, redrafted
when a piece fails.

``drafts.jsonl`` holds one line per drafting of a pair (``index`` into the training pairs,
the ``spct.cold_start.Draft`` fields, and ``attempt``); the last line of a pair is its
current draft (``read_drafts``). A run first redrafts the pairs whose principles or a
critique failed (``RETRIED``; at most ``DRAFT_ATTEMPTS`` tries in all, each drawing only the
failed pieces again), then drafts the pairs never drafted. A pair whose response is too
short to quote is not retried: another draw cannot change that. Everything is appended as
it comes, so a run cut off resumes where it stopped.

Example::

    entry = draft_stage(Path("runs/en"), "smollm2-135m-instruct", template, items, seed=0, seconds=1800)
    usable = [row for row in read_drafts(Path("runs/en")) if not row["reason"]]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from grm.pretrained import resolve_model
from grm.templates import JudgeTemplate
from grm.transformers_engine import TransformersEngine
from spct.cold_start import draft_from_json, draft_pieces
from spct.data import LabeledItem, read_jsonl

DRAFT_CHUNK = 32  # items per engine call: up to 3 generations each, so up to 96 rows in flight
DRAFT_ATTEMPTS = 3  # tries per pair, the first included
RETRIED = ("no_principles", "no_critique", "ungrounded_quote")


def read_drafts(out: Path) -> list[dict]:
    """The current draft of every drafted pair: the last line per ``index`` of drafts.jsonl."""
    latest: dict[int, dict] = {}
    for row in read_jsonl(out / "drafts.jsonl"):
        latest[row["index"]] = row
    return list(latest.values())


def _chunks(out: Path, items: list[LabeledItem]) -> list[tuple[int, list[int]]]:
    """(attempt, pair indices) engine calls still to make: redrafts first, then new pairs."""
    rows = {row["index"]: row for row in read_drafts(out)}
    calls = []
    for attempt in range(1, DRAFT_ATTEMPTS):
        again = [i for i, row in rows.items() if row["reason"] in RETRIED and row.get("attempt", 0) == attempt - 1]
        calls += [(attempt, again[s:s + DRAFT_CHUNK]) for s in range(0, len(again), DRAFT_CHUNK)]
    # Similar lengths share an engine call (its prompts are padded to the longest one); sorted
    # within windows of 8 calls, so a stage cut short has drafted every kind of pair.
    todo, window = [i for i in range(len(items)) if i not in rows], 8 * DRAFT_CHUNK
    todo = [i for w in range(0, len(todo), window) for i in sorted(todo[w:w + window], key=lambda i: _chars(items[i]))]
    return calls + [(0, todo[s:s + DRAFT_CHUNK]) for s in range(0, len(todo), DRAFT_CHUNK)]


def draft_stage(out: Path, base: str, template: JudgeTemplate, items: list[LabeledItem], seed: int,
                seconds: float, log=print) -> dict:
    """Redraft the failed pairs, then draft the rest, appending to drafts.jsonl until ``seconds`` pass."""
    path = out / "drafts.jsonl"
    calls = _chunks(out, items)
    if not calls:
        rows = read_drafts(out)
        return {"stage": "draft", "status": "done", "drafted": len(rows), "usable": sum(not r["reason"] for r in rows)}
    engine = TransformersEngine.load(resolve_model(base))
    began, deadline = time.monotonic(), time.monotonic() + seconds
    tokens, drafted, redrafted, recovered = 0, 0, 0, 0
    current = {row["index"]: row for row in read_drafts(out)}
    with open(path, "a", encoding="utf-8") as f:
        while calls and time.monotonic() <= deadline:  # a pass's rejects are redrafted by the next pass
            for attempt, chunk in calls:
                if time.monotonic() > deadline:
                    break
                before = [draft_from_json(current[i]) for i in chunk] if attempt else None
                drafts = draft_pieces(engine, template, [items[i] for i in chunk], seed, indices=chunk,
                                      previous=before, attempt=attempt)
                for index, draft in zip(chunk, drafts):
                    current[index] = {"index": index, **draft.to_json(), "attempt": attempt}
                    f.write(json.dumps(current[index]) + "\n")
                f.flush()
                tokens += sum(d.tokens for d in drafts) - sum(d.tokens for d in before or [])
                if attempt:
                    redrafted, recovered = redrafted + len(chunk), recovered + sum(d.ok for d in drafts)
                else:
                    drafted += len(chunk)
                log(f"draft: {len(current)}/{len(items)} pairs drafted, {redrafted} redrafted this run "
                    f"({recovered} now usable), {tokens / (time.monotonic() - began):.1f} tokens/s")
            calls = _chunks(out, items)
    rows = read_drafts(out)
    return {"stage": "draft", "status": "partial" if calls else "done",
            "drafted": len(rows), "usable": sum(not r["reason"] for r in rows),
            "this_run": {"pairs": drafted, "redrafted": redrafted, "recovered": recovered, "generated_tokens": tokens,
                         "prefill_tokens": engine.stats["prefill_tokens"],
                         "wall_s": round(time.monotonic() - began, 1)}}


def _chars(labeled: LabeledItem) -> int:
    return len(labeled.item.conversation[-1].content) + max(len(r) for r in labeled.item.responses)
