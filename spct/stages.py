"""The SPCT stages as the pipeline calls them: each takes the model, trains it in place and
returns its figures (or None when it had nothing to learn from).

Kept apart from ``pipeline`` so that each stage reads top to bottom: build the data,
train, report.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import time

import grm.defaults as defaults
from grm.prompts import build_judge_content
from grm.tasks import generate_tasks
from policy.sft import SFTConfig, train_sft
from spct.config import BETA_GRID, Budget, SPCTOptions
from spct.data import SPCT_TEMPLATE, items_from_tasks, make_example, teacher_batches
from spct.meta_rm_train import MetaConfig, train_meta_rm
from spct.rft import hinted_samples, rft_filter, sample_groups
from spct.rl import RLConfig, train_rl
from spct.stage_eval import greedy_eval, judge_for


def cold_start(model, tokenizer, train, budget: Budget, args: SPCTOptions) -> dict | None:
    """SFT on correct judgments: the rule-based teacher's, or the data's ``judgment`` field."""
    if not any(it.task is not None or it.judgment is not None for it in train):
        return None  # plain preference data: no judgments to imitate, RFT starts from the base model
    batches = teacher_batches(tokenizer, SPCT_TEMPLATE, train, budget.cold_batch, args.seed)
    cfg = SFTConfig(steps=budget.cold_steps, time_limit_s=budget.cold_time_s)
    losses = train_sft(model, batches, cfg, desc="cold start")
    return {"steps": len(losses), "batch": budget.cold_batch, "lr": cfg.lr,
            "loss_first": round(losses[0], 4), "loss_last20": round(sum(losses[-20:]) / len(losses[-20:]), 4)}


def _subset(train, n: int, seed: int, salt: str):
    """``n`` training items drawn without replacement, the same for the same seed and salt."""

    return random.Random(f"{salt}:{seed}").sample(list(train), min(n, len(train)))


def rft_stage(model, tokenizer, train, budget: Budget, args: SPCTOptions, out) -> dict:
    """Sample 3 judgments per prompt, keep the correct ones of not-too-easy prompts, fine-tune."""


    items = _subset(train, budget.rft_prompts, args.seed, "rft")
    grm = judge_for(model.eval(), tokenizer)
    groups = sample_groups(grm, items, temperature=1.0, max_new_tokens=budget.max_new_tokens, seed=args.seed)
    if args.hinted:
        hinted = [t for k in range(0, len(items), 16)
                  for t in hinted_samples(grm, items[k:k + 16], max_new_tokens=budget.max_new_tokens,
                                          seed=args.seed + k)]
        groups = [g + [h for h in hinted if h.item == i] for i, g in enumerate(groups)]
    kept, stats = rft_filter(groups)
    # Every sample with its verdict: the meta RM trains on them, tests check the filter on them.
    kept_ids = {id(t) for t in kept}
    with open(out / "rft_samples.jsonl", "w") as f:
        for group in groups:
            for t in group:
                f.write(json.dumps({"item": t.item, "permutation": t.permutation, "text": t.text,
                                    "scores": t.scores, "correct": t.correct, "hinted": t.hinted,
                                    "kept": id(t) in kept_ids}) + "\n")
    if not kept:
        return {**stats, "steps": 0}
    examples = [make_example(tokenizer, SPCT_TEMPLATE, items[t.item].item, t.permutation, t.text) for t in kept]
    rng = random.Random(f"rft-batches:{args.seed}")

    teacher = (teacher_batches(tokenizer, SPCT_TEMPLATE, train, budget.cold_batch, args.seed + 1)
               if any(it.task is not None or it.judgment is not None for it in train) else None)

    def batches():
        # One response count per batch (shared prefix), like the cold start. Departure from
        # the paper: with a teacher, every other batch is teacher judgments. A 3M model's
        # "correct" samples are often right by luck with wrong evidence; alone they wash
        # out what the cold start taught (measured: greedy accuracy fell 39% -> 24%).
        by_n = {}
        for t, e in zip(kept, examples):
            by_n.setdefault(len(t.permutation), []).append(e)
        sizes, weights = zip(*((n, len(g)) for n, g in sorted(by_n.items())))
        for step in range(1_000_000):
            if teacher is not None and step % 2:
                yield next(teacher)
            else:
                yield rng.choices(by_n[rng.choices(sizes, weights)[0]], k=budget.cold_batch)

    cfg = SFTConfig(steps=budget.rft_steps, lr=5e-4, warmup=min(10, budget.rft_steps))
    losses = train_sft(model, batches(), cfg, desc="RFT")
    return {**stats, "steps": len(losses), "lr": cfg.lr, "teacher_mix": 0.5 if teacher is not None else 0.0,
            "loss_last": round(sum(losses[-10:]) / len(losses[-10:]), 4)}


def rl_stage(model, tokenizer, train, budget: Budget, args: SPCTOptions) -> dict:
    """GRPO with the +1/-1 rule-based reward and a KL penalty to the RFT model.

    With ``--beta-grid`` each beta of the paper's grid first runs a short RL (a third of
    the steps) from the same RFT model, judged greedily on the validation split; the
    best one then runs the full stage.
    """


    items = _subset(train, 100_000, args.seed, "rl")
    cfg = RLConfig(steps=budget.rl_steps, prompts_per_step=budget.rl_prompts, beta=args.beta,
                   max_new_tokens=budget.max_new_tokens, seed=args.seed, time_limit_s=budget.rl_time_s)
    grid = []
    if args.beta_grid and not args.data:

        validation = items_from_tasks(generate_tasks(min(300, budget.eval_items), 0, "validation"))
        for beta in BETA_GRID:
            trial = copy.deepcopy(model)
            short = dataclasses.replace(cfg, beta=beta, steps=max(1, cfg.steps // 3),
                                        time_limit_s=cfg.time_limit_s and cfg.time_limit_s / 3)
            train_rl(trial, tokenizer, items, short, desc=f"RL grid beta={beta}")
            grid.append({"beta": beta, "validation_greedy": greedy_eval(trial, tokenizer, validation,
                                                                        budget.max_new_tokens)})
            print(f"[spct] beta grid: {grid[-1]}", flush=True)
        best = max(grid, key=lambda g: (g["validation_greedy"]["accuracy"], g["validation_greedy"]["parse_rate"]))
        cfg = dataclasses.replace(cfg, beta=best["beta"])
    return {**train_rl(model, tokenizer, items, cfg), "beta_grid": grid}


def meta_items(train, n: int, seed: int):
    """The train items whose fresh samples teach the meta RM (the same for the same seed)."""
    return _subset(train, n, seed + 1, "meta")


def meta_samples(grm, items, seed: int, max_new_tokens: int, time_limit_s: float | None = None, chunk: int = 64):
    """4 judgments per item from ``grm``, as Trajectories (``item`` indexes ``items``).

    In chunks of ``chunk`` items, alternately at temperature 1.0 (RFT's: more varied errors)
    and 0.5 (inference's); sampling stops after ``time_limit_s`` at a chunk boundary.
    """


    out, start = [], time.monotonic()
    for at in range(0, len(items), chunk):
        if time_limit_s is not None and at and time.monotonic() - start > time_limit_s:
            break
        temperature = defaults.TEMPERATURE if at // chunk % 2 else 1.0
        out += [dataclasses.replace(t, item=at + t.item)  # sample_groups counts items from 0
                for g in sample_groups(grm, items[at:at + chunk], k=4, temperature=temperature,
                                       max_new_tokens=max_new_tokens, seed=seed + 7 + at) for t in g]
    return out


def meta_rm_stage(model, tokenizer, train, budget: Budget, args: SPCTOptions, out):
    """BCE on (prompt, judgment) -> correct, from the RFT samples plus the GRM's own samples."""


    pairs, labels = [], []
    rft_items = _subset(train, budget.rft_prompts, args.seed, "rft")  # the items rft_samples.jsonl indexes
    samples = out / "rft_samples.jsonl"
    rows = [json.loads(line) for line in samples.read_text().splitlines()] if samples.exists() else []
    fresh_items = meta_items(train, budget.meta_prompts, args.seed)
    fresh = meta_samples(judge_for(model.eval(), tokenizer), fresh_items, args.seed, budget.max_new_tokens,
                         budget.meta_sample_time_s)
    rows += [{"item": t.item, "permutation": t.permutation, "text": t.text, "scores": t.scores,
              "correct": t.correct, "hinted": t.hinted, "fresh": True} for t in fresh]
    usable = [r for r in rows if r["scores"] is not None and not r["hinted"]] or rows  # invalid never vote
    for r in usable:
        item = (fresh_items if r.get("fresh") else rft_items)[r["item"]].item
        pairs.append((build_judge_content(SPCT_TEMPLATE, item, r["permutation"]), r["text"]))
        labels.append(int(r["correct"]))
    return train_meta_rm(model, tokenizer, pairs, labels, MetaConfig(steps=budget.meta_steps, seed=args.seed,
                                                                           batch_size=budget.meta_batch,
                                                                           time_limit_s=budget.meta_time_s))
