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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from policy.spct.data import Example


@dataclass(frozen=True)
class SFTConfig:
    steps: int = 900  # optimizer steps
    lr: float = 2.5e-3  # peak AdamW learning rate (DESIGN.md section 11 for a 3M model)
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


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest shared prefix, leaving every row at least one token of its own."""
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(limit):
        if any(r[i] != first[i] for r in rows):
            return i
    return max(limit, 0)


def batch_logprobs(model, batch: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of every example's target tokens under ``model``.

    Returns ``(logp, mask)``, both ``[B, T]`` with T the longest target; mask is 1 on real
    target tokens. Gradients flow through the shared prefix too.
    """
    device = model.device
    P = _common_prefix([e.prompt_ids for e in batch])
    cache = None
    if P:
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([batch[0].prompt_ids[:P]], device=device), past_key_values=cache,
              use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(len(batch))
    suffixes = [list(e.prompt_ids[P:]) + list(e.target_ids) for e in batch]
    S = max(len(s) for s in suffixes)
    ids = torch.zeros(len(batch), S, dtype=torch.long)
    mask = torch.zeros(len(batch), P + S, dtype=torch.long)
    mask[:, :P] = 1
    for j, s in enumerate(suffixes):  # right padding: padded slots come after every real token
        ids[j, :len(s)] = torch.tensor(s)
        mask[j, P:P + len(s)] = 1
    positions = torch.arange(P, P + S).expand(len(batch), S)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                   past_key_values=cache, use_cache=cache is not None).logits  # [B, S, V]
    T = max(len(e.target_ids) for e in batch)
    rows, cols, tgt = [], [], []
    tmask = torch.zeros(len(batch), T)
    for j, e in enumerate(batch):
        start = len(e.prompt_ids) - P  # suffix index of the first target token
        for t, token in enumerate(e.target_ids):
            rows.append(j), cols.append(start + t - 1), tgt.append(token)  # predicted one step earlier
        tmask[j, :len(e.target_ids)] = 1
    picked = logits[rows, cols].float().log_softmax(-1)  # [sum T_j, V]
    flat = picked.gather(-1, torch.tensor(tgt, device=device)[:, None])[:, 0]
    logp = torch.zeros(len(batch), T, device=device, dtype=flat.dtype)
    logp[tmask.bool().to(device)] = flat  # row-major order matches the (j, t) loop above
    return logp, tmask.to(device)


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
