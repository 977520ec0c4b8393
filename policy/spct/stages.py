"""The SPCT stages as the pipeline calls them: each takes the model, trains it in place and
returns its figures (or None when it had nothing to learn from).

Kept apart from ``pipeline`` so that each stage reads top to bottom: build the data,
train, report.
"""

from __future__ import annotations

from grm.templates import DEFAULT_TEMPLATE
from policy.spct.data import teacher_batches
from policy.spct.sft import SFTConfig, train_sft


def cold_start(model, tokenizer, train, budget, args) -> dict | None:
    """SFT on correct judgments: the rule-based teacher's, or the data's ``judgment`` field."""
    if not any(it.task is not None or it.judgment is not None for it in train):
        return None  # plain preference data: no judgments to imitate, RFT starts from the base model
    batches = teacher_batches(tokenizer, DEFAULT_TEMPLATE, train, budget.cold_batch, args.seed)
    cfg = SFTConfig(steps=budget.cold_steps, time_limit_s=budget.cold_time_s)
    losses = train_sft(model, batches, cfg, desc="cold start")
    return {"steps": len(losses), "batch": budget.cold_batch, "lr": cfg.lr,
            "loss_first": round(losses[0], 4), "loss_last20": round(sum(losses[-20:]) / len(losses[-20:]), 4)}
