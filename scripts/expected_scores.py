"""Re-read a pointwise judge's evaluation journal with expected scores instead of sampled ones.

A judge trained with the ``point`` stage ranks answers by small shifts of its score
distribution; sampled integer scores often tie. For every judgment in a
``grm eval --journal`` file of a pointwise judge this reads each answer's next-token
distribution over the scores 1..9 where its score was written (the prompt and the judgment
up to its box, read by the engine's ``next_token_logprobs``: the prompt is prefilled once
for all of its judgments) and reports accuracy when each judgment's score is that expected
value, summed over the first k samples, beside the same count on the sampled scores. Here a
tie, or an item with no scored sample, counts as wrong (stricter than ``grm eval``, which
breaks a tie at random); unscored samples do not vote. The values read are appended to ``--read`` as they come, so a cut-off run
resumes. With ``--write-journal`` it also writes the journal with the values filled in, as
``grm eval`` would have written it with the reading on; ``grm eval`` rerun on that journal
(same settings) skips every item and reports from it, tied votes broken by the expected scores.

    python scripts/expected_scores.py --adapter runs/english6/point-adapter \
        --data runs/english/validation.jsonl --journal runs/english6/eval-point.journal.jsonl \
        --read runs/english6/expected-scores.jsonl --output runs/english6/expected-scores.json \
        --write-journal runs/english6/eval-point-read.journal.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from grm.eval.records import parse_lines
from grm.eval.statistics import item_bootstrap
from grm.judge import GenerativeRewardModel
from grm.pointwise import BOX, digit_ids, expected_value
from grm.prompts import build_judge_content, encode_prompt, one_response

PART = re.compile(r"\[Answer (\d+)\]\n")


def parts(text: str) -> list[str]:
    """A merged pointwise judgment's per-answer texts, in answer order."""
    pieces = PART.split(text)[1:]
    return [body.strip() for body in pieces[1::2]]


def read_row(judge, digits, item, row) -> dict:
    """{"sampled": [[expected score per answer] or None per sample], "greedy": [...]}; a row
    that ``grm eval`` wrote with the reading on already holds them."""
    kinds = ("sampled", "greedy")
    if all("expected_scores" in j for kind in kinds for j in row[kind]["judgments"]):
        return {kind: [j["expected_scores"] for j in row[kind]["judgments"]] for kind in kinds}
    tok = judge.engine.tokenizer
    n = len(item.input.responses)
    sequences, owners = [], []
    for a in range(n):  # an answer's judgments together: they share its prompt
        prompt = encode_prompt(tok, build_judge_content(judge.template, one_response(item.input, a), (0,)))
        for kind in ("sampled", "greedy"):
            for s, j in enumerate(row[kind]["judgments"]):
                answers = parts(j["text"])
                if j["scores"] is not None and len(answers) == n:
                    cut = answers[a][:answers[a].rindex(BOX) + len(BOX)]
                    sequences.append(tuple(prompt) + tuple(tok(cut, add_special_tokens=False).input_ids))
                    owners.append((kind, s, a))
    read = {kind: [[None] * n if j["scores"] is not None else None for j in row[kind]["judgments"]]
            for kind in ("sampled", "greedy")}
    for (kind, s, a), logprobs in zip(owners, judge.engine.next_token_logprobs(sequences, digits)):
        read[kind][s][a] = expected_value(logprobs)
    return {kind: [v if v is None or None not in v else None for v in values] for kind, values in read.items()}


def sums(scores: list) -> list | None:
    """Per answer, the sum over the scored samples (``scores``: a list per sample, None when
    unscored; unscored samples do not vote, as in ``grm eval``); None when none is scored."""
    scored = [s for s in scores if s is not None]
    return [sum(col) for col in zip(*scored)] if scored else None


def right(scores: list, best: int, tie_break: list | None = None) -> bool:
    """The sums over ``scores`` put ``best`` strictly first; among answers tied at the top,
    ``tie_break`` (other sums), when given, decides, again strictly."""
    total = sums(scores)
    if total is None:
        return False
    top = [i for i, v in enumerate(total) if v == max(total)]
    if len(top) > 1 and tie_break is not None:
        top = [i for i in top if tie_break[i] == max(tie_break[j] for j in top)]
    return top == [best]


def filled(row: dict, read: dict) -> dict:
    """The journal row with the expected scores read: on every judgment read, and each result's
    ``expected_rewards`` and ``best`` as ``grm.aggregation`` sets them (tied votes broken by the
    expected rewards; a tie left keeps the seeded coin already drawn)."""
    row = json.loads(json.dumps(row))
    for kind in ("sampled", "greedy"):
        result = row[kind]
        for judgment, values in zip(result["judgments"], read[kind]):
            judgment["expected_scores"] = values
        used = [j for j in result["judgments"] if j["scores"] is not None]
        if used and all(j["expected_scores"] is not None for j in used):
            result["expected_rewards"] = [sum(col) / len(used) for col in zip(*(j["expected_scores"] for j in used))]
            sums = result["vote_sums"]
            tied = [i for i, v in enumerate(sums) if v == max(sums)]
            top = [i for i in tied if result["expected_rewards"][i] == max(result["expected_rewards"][t] for t in tied)]
            result["best"] = top[0] if len(top) == 1 else result["best"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--journal", required=True)
    p.add_argument("--read", required=True, help="JSONL of the values read, one line per item (resumable)")
    p.add_argument("--output", required=True)
    p.add_argument("--write-journal", help="also write the journal with the expected scores filled in here "
                   "(rerun grm eval with it as --journal for the report with tied votes broken by them)")
    p.add_argument("-k", default="1,4,8")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    began = time.monotonic()
    judge = GenerativeRewardModel.load(args.adapter)
    if not judge.template.pointwise:
        raise SystemExit(f"{args.adapter}: its template {judge.template.version} is not pointwise")
    digits = digit_ids(judge.engine.tokenizer)
    items, _ = parse_lines(Path(args.data).read_text(encoding="utf-8").splitlines())
    by_line = {it.line: it for it in items}
    lines = Path(args.journal).read_text().splitlines(keepends=True)
    lines = lines if not lines or lines[-1].endswith("\n") else lines[:-1]  # a line still being written
    rows = [r for r in map(json.loads, lines) if "sampled" in r]
    out = Path(args.read)
    done = {r["line"]: r for r in map(json.loads, out.read_text().splitlines())} if out.exists() else {}
    with out.open("a") as f:
        for row in rows:
            if row["line"] not in done:
                done[row["line"]] = {"line": row["line"], **read_row(judge, digits, by_line[row["line"]], row)}
                f.write(json.dumps(done[row["line"]]) + "\n")
                f.flush()
    if args.write_journal:
        Path(args.write_journal).write_text("".join(json.dumps(filled(r, done[r["line"]])) + "\n" for r in rows))
    sources = np.array([(by_line[r["line"]].source or "").split(":")[0] for r in rows])
    report = {"items": len(rows), "ties_and_unscored_count_wrong": True}

    def estimate(correct: list[bool]) -> dict:
        correct = np.array(correct)
        return {**item_bootstrap(correct, seed=0).to_json(),
                "by_source": {s: float(correct[sources == s].mean()) for s in sorted(set(sources))}}

    for k in (int(v) for v in args.k.split(",")):
        best = [by_line[r["line"]].best for r in rows]
        report[f"expected@{k}"] = estimate([right(done[r["line"]]["sampled"][:k], b) for r, b in zip(rows, best)])
        written = [[j["scores"] for j in r["sampled"]["judgments"][:k]] for r in rows]
        report[f"sampled@{k}"] = estimate([right(w, b) for w, b in zip(written, best)])
        report[f"sampled@{k}_tie_broken_by_expected"] = estimate(
            [right(w, b, sums(done[r["line"]]["sampled"][:k]) or None) for w, r, b in zip(written, rows, best)])
    report["greedy_expected"] = estimate([right(done[r["line"]]["greedy"], by_line[r["line"]].best) for r in rows])
    report["wall_s"] = round(time.monotonic() - began, 1)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
