"""``grm spct``: train a GRM with SPCT from nothing (or from any causal LM) in one command.

    grm spct --out runs/spct                       # ~55 min on 2 idle CPU cores (estimated), synthetic tasks
    grm spct --out /tmp/q --quick                  # < 2 min: a tiny model, every stage, for tests
    grm spct --out runs/x --base-model Qwen/Qwen2.5-0.5B-Instruct --data prefs.jsonl --device cuda

Stages, each writing a Hugging Face checkpoint under ``--out`` (``--resume`` reuses the
ones already written):

0. ``tokenizer/``: a SentencePiece BPE tokenizer trained on generated judge prompts and
   judgments (skipped with ``--base-model``, which brings its own).
1. ``cold_start/``: SFT on correct judgments written by the rule-based teacher (or taken
   from the data's ``judgment`` field); skipped when there are none (plain ``--data``).
2. ``rft/``: rejective fine-tuning (paper, section 3.2): 3 sampled judgments per prompt,
   correct ones kept, all-correct prompts dropped; optional hinted sampling.
3. ``rl/``: rule-based online RL with GRPO (group 4, reward +1/-1, KL to the reference);
   this is the GRM.
4. ``meta_rm/``: a one-label sequence classifier trained with BCE on whether a sampled
   judgment is correct (RFT samples plus the GRM's own).

Every stage's greedy accuracy and parse rate on the held-out test split go to
``report.json``. Departures from the paper, for a model 7,000 times smaller: the teacher is
code, not a bigger model; the budget is put into the cold start (docs/design.md, "The small
judge").
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import shutil
import time
from pathlib import Path

import torch

from grm.judge import save_template
from grm.prompts import build_judge_content
from grm.tasks import generate_tasks
from policy.model import build_model, load_base
from spct import stages
from spct.config import FULL, QUICK, SPCTOptions
from spct.data import SPCT_TEMPLATE, items_from_tasks, load_preference_splits, train_items
from spct.stage_eval import greedy_eval
from spct.teacher import teacher_judgment
from spct.tokenizer import save_tokenizer, train_tokenizer


def run(args: SPCTOptions) -> int:
    t0 = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = QUICK if args.quick else FULL
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # The quick run's batches are tiny: one thread loses little, and it does not stall in
    # OpenMP barriers when the CPU is shared (measured here: 3-10x slower with 2 threads
    # on a loaded 2-core machine).
    torch.set_num_threads(1 if args.quick else max(1, os.cpu_count() or 1))
    report = _load_json(out / "report.json") if args.resume else {}
    report["args"] = dataclasses.asdict(args)
    report["budget"] = dataclasses.asdict(budget)

    # ---- data: labelled items (train / test)
    if args.data:  # split by prompt (grm.eval.splits): no prompt of the held-out items is trained on
        splits = load_preference_splits(args.data)
        train, test = splits["train"], splits["validation"]  # a tiny file may hold out nothing
        if not train:
            raise ValueError(f"{args.data}: no records in the train split")
        random.Random(args.seed).shuffle(train)
        random.Random(args.seed + 1).shuffle(test)  # the checked items mix the file's sources
        test = test[:budget.eval_items]
    else:
        train = train_items(budget, args.seed)
        test = items_from_tasks(generate_tasks(budget.eval_items, 0, "test"))

    # ---- stage 0: tokenizer and the starting model
    sp_model = None
    if args.base_model:
        model, tokenizer = load_base(args.base_model, device=str(device))
        sp_model = Path(args.base_model) / "tokenizer.model"  # kept beside every stage, when it exists
    else:
        tokenizer = _tokenizer_stage(out, train, args)
        sp_model = out / "tokenizer" / "tokenizer.model"
        model = build_model(tokenizer, budget.size, seed=args.seed).to(device)
    stage = _Stages(out, tokenizer, sp_model, device, report, args.resume, t0)
    if args.stop_after == "tokenizer":
        return stage.finish()

    # ---- stage 1: cold start on teacher (or data) judgments
    model = stage.run("cold_start", model, lambda m: stages.cold_start(m, tokenizer, train, budget, args), test, budget)
    if args.stop_after == "cold_start":
        return stage.finish()
    model = stage.run("rft", model, lambda m: stages.rft_stage(m, tokenizer, train, budget, args, out), test, budget)
    if args.stop_after == "rft":
        return stage.finish()
    model = stage.run("rl", model, lambda m: stages.rl_stage(m, tokenizer, train, budget, args), test, budget)
    if args.stop_after == "rl":
        return stage.finish()
    stage.run_meta(lambda: stages.meta_rm_stage(model, tokenizer, train, budget, args, out))
    return stage.finish()


def _tokenizer_stage(out: Path, train, args: SPCTOptions):
    from transformers import AutoTokenizer

    path = out / "tokenizer"
    if args.resume and (path / "tokenizer.model").exists():
        return AutoTokenizer.from_pretrained(path)

    rng = random.Random(f"tokenizer:{args.seed}")
    texts = []
    for it in rng.sample(train, min(3000, len(train))):
        n = len(it.item.responses)
        perm = tuple(rng.sample(range(n), n))
        texts.append(build_judge_content(SPCT_TEMPLATE, it.item, perm))
        if it.task is not None:
            texts.append(teacher_judgment(it.task, perm, rng))
    return train_tokenizer(texts, path)


class _Stages:
    """Runs, saves, reloads (with --resume) and evaluates the stages; keeps the report."""

    def __init__(self, out, tokenizer, sp_model, device, report, resume, t0):
        self.out, self.tokenizer, self.sp_model, self.device = out, tokenizer, sp_model, device
        self.report, self.resume, self.t0 = report, resume, t0

    def save(self, model, name: str, tokenizer=None, dtype=None) -> Path:
        path = self.out / name
        tmp = path.with_name(name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if dtype is not None:  # a copy, so the model in memory keeps training in float32
            model = copy.deepcopy(model).to(dtype)
        model.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tokenizer or self.tokenizer, tmp, self.sp_model)
        save_template(SPCT_TEMPLATE, tmp)
        shutil.rmtree(path, ignore_errors=True)
        tmp.replace(path)
        return path

    def run(self, name, model, train_fn, test, budget):
        from transformers import AutoModelForCausalLM

        path = self.out / name
        if self.resume and (path / "config.json").exists():
            print(f"[spct] {name}: reusing {path}", flush=True)
            return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(self.device).eval()
        start = time.monotonic()
        stats = train_fn(model)
        if stats is None:  # the stage had nothing to learn from (e.g. no judgments for a cold start)
            print(f"[spct] {name}: skipped", flush=True)
            self.report[name] = {"skipped": True}
            return model
        self.save(model, name)
        figures = greedy_eval(model, self.tokenizer, test, budget.max_new_tokens)
        self.report[name] = {**stats, "wall_s": round(time.monotonic() - start, 1), "test_greedy": figures}
        print(f"[spct] {name}: {figures} in {self.report[name]['wall_s']}s", flush=True)
        self._write()
        return model.eval()

    def run_meta(self, train_fn):
        path = self.out / "meta_rm"
        if self.resume and (path / "config.json").exists():
            return
        start = time.monotonic()
        meta_model, meta_tokenizer, stats = train_fn()
        self.save(meta_model, "meta_rm", meta_tokenizer, dtype=torch.bfloat16)  # half the size to ship
        self.report["meta_rm"] = {**stats, "wall_s": round(time.monotonic() - start, 1)}
        self._write()

    def finish(self) -> int:
        self.report["wall_s_this_run"] = round(time.monotonic() - self.t0, 1)
        self._write()
        print(f"[spct] done in {self.report['wall_s_this_run']}s; checkpoints in {self.out}", flush=True)
        return 0

    def _write(self):
        (self.out / "report.json").write_text(json.dumps(self.report, indent=2))


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
