"""Re-read a pointwise judge's evaluation journal with expected scores instead of sampled ones.

A judge trained with the ``point`` stage ranks answers by small shifts of its score
distribution; sampled integer scores often tie. This reads, for every judgment in a
``grm eval --journal`` file of a pointwise judge, each answer's next-token distribution
over the scores 1..9 where its score was written (the prompt and the judgment up to its
box, teacher-forced) and reports accuracy when each judgment's score is that expected
value: one judgment (the first sample, the greedy one) and the sum over the samples.
A tie or an unscored judgment counts as wrong (stricter than ``grm eval``, which breaks a
tie at random).

    python scripts/expected_scores.py --adapter runs/english6/point-adapter \
        --data runs/english/validation.jsonl --journal runs/english6/eval-point.journal.jsonl \
        --output runs/english6/expected-scores-120.json
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
from grm.prompts import build_judge_content, encode_prompt, one_response
from policy.logprobs import Example, batch_logprobs
from spct.pointwise import digit_ids, expected_score

PART = re.compile(r"\[Answer (\d+)\]\n")


def parts(text: str) -> list[str]:
    """A merged pointwise judgment's per-answer texts, in answer order."""
    pieces = PART.split(text)[1:]
    return [body.strip() for body in pieces[1::2]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--journal", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=9, help="texts per forward pass")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    began = time.monotonic()
    judge = GenerativeRewardModel.load(args.adapter)
    if not judge.template.pointwise:
        raise SystemExit(f"{args.adapter}: its template {judge.template.version} is not pointwise")
    model, tokenizer = judge.engine.model, judge.engine.tokenizer
    digits = digit_ids(tokenizer)
    items, _ = parse_lines(Path(args.data).read_text(encoding="utf-8").splitlines())
    by_line = {it.line: it for it in items}
    rows = [json.loads(line) for line in Path(args.journal).read_text().splitlines()]
    rows = [r for r in rows if "sampled" in r]
    texts, owners = [], []  # the judgment up to its box; (row, kind, sample, answer)
    for r, row in enumerate(rows):
        item = by_line[row["line"]]
        judged = [(kind, s, parts(j["text"])) for kind in ("sampled", "greedy")
                  for s, j in enumerate(row[kind]["judgments"]) if j["scores"] is not None]
        for a in range(len(item.input.responses)):  # an answer's texts together: they share its prompt
            prompt = encode_prompt(tokenizer, build_judge_content(judge.template, one_response(item.input, a), (0,)))
            for kind, s, answers in judged:
                if len(answers) == len(item.input.responses):
                    body = answers[a]
                    cut = body[:body.rindex("\\boxed{") + len("\\boxed{")]
                    texts.append(Example(tuple(prompt), tuple(tokenizer(cut, add_special_tokens=False).input_ids)))
                    owners.append((r, kind, s, a))
    expected = {}
    model.eval()
    with torch.no_grad():
        for start in range(0, len(texts), args.batch):
            chunk = texts[start:start + args.batch]
            _, _, logits = batch_logprobs(model, chunk, logits_at=[len(e.target_ids) for e in chunk])
            for owner, value in zip(owners[start:start + args.batch], expected_score(logits, digits).tolist()):
                expected[owner] = value

    def right(r: int, kind: str, samples: range) -> bool:
        n = len(by_line[rows[r]["line"]].input.responses)
        sums = [0.0] * n
        for s in samples:
            if any((r, kind, s, a) not in expected for a in range(n)):
                return False  # unscored counts as wrong
            for a in range(n):
                sums[a] += expected[(r, kind, s, a)]
        best = by_line[rows[r]["line"]].best
        return all(sums[best] > v for i, v in enumerate(sums) if i != best)

    sources = np.array([(by_line[row["line"]].source or "").split(":")[0] for row in rows])
    report = {"items": len(rows), "texts_read": len(texts)}
    samples = len(rows[0]["sampled"]["judgments"])
    for name, kind, picked in (("expected@1", "sampled", range(1)), (f"expected@{samples}", "sampled", range(samples)),
                               ("greedy_expected", "greedy", range(1))):
        correct = np.array([right(r, kind, picked) for r in range(len(rows))])
        report[name] = {**item_bootstrap(correct, seed=0).to_json(),
                        "by_source": {s: float(correct[sources == s].mean()) for s in sorted(set(sources))}}
    report["wall_s"] = round(time.monotonic() - began, 1)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
