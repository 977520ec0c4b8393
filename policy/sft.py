"""Supervised fine-tuning of the GRM on judgments: the cold start and the RFT stage.

The loss is the mean negative log-likelihood of the judgment tokens (and the EOS that
ends them); the judge prompt is context only. Every prompt of a batch is rendered from
the same template, so the rows share a long token prefix (the instruction, ~60% of a
two-response prompt): ``batch_logprobs`` runs that prefix once, copies its KV cache to
every row and runs only the rows' own suffixes, which roughly halves the cost of a
step on CPU. The result is exactly what one forward per row would give.

Example::

    losses = train_sft(model, teacher_batches(...), SFTConfig(steps=900), desc="cold start")
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from policy.logprobs import Example, batch_logprobs  # noqa: F401 (batch_logprobs re-exported)


@dataclass(frozen=True)
class SFTConfig:
    steps: int = 900  # optimizer steps
    lr: float = 2.5e-3  # peak AdamW learning rate (docs/design.md, "The small judge" for a 3M model)
    warmup: int = 30  # linear warm-up steps, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    time_limit_s: float | None = None  # the schedule ends at whichever comes first: steps or this time

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"SFTConfig.steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"SFTConfig.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"SFTConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


def lr_at(step: int, cfg: SFTConfig, elapsed_s: float = 0.0) -> float:
    """Linear warm-up, then cosine from lr down to min_lr_ratio * lr at the end.

    The end is the last step or, with a time limit, the limit if it comes first: on a
    shared CPU the step rate varies, and a schedule that follows the clock still anneals.
    """
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.time_limit_s:
        progress = max(progress, elapsed_s / cfg.time_limit_s)
    progress = min(progress, 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_sft(model, batches: Iterator[list[Example]], cfg: SFTConfig, desc: str = "sft") -> list[float]:
    """Minimise the judgment-token NLL for ``cfg.steps`` batches; return the loss per step."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    model.train()
    losses: list[float] = []
    start = time.monotonic()
    bar = tqdm(range(cfg.steps), desc=desc, mininterval=5)
    for step in bar:
        elapsed = time.monotonic() - start
        if cfg.time_limit_s is not None and elapsed > cfg.time_limit_s:
            bar.write(f"{desc}: time limit {cfg.time_limit_s:.0f}s reached after {step} steps")
            break
        lr = lr_at(step, cfg, elapsed)
        for group in opt.param_groups:
            group["lr"] = lr
        logp, mask = batch_logprobs(model, next(batches))
        loss = -(logp * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", lr=f"{lr:.1e}")
    model.eval()
    return losses
