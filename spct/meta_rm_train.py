"""Train the meta RM: a one-label sequence classifier that predicts whether a judgment is correct.

Meta-RM guided voting (Liu et al. 2025, section 3.3) keeps the k_meta judgments the meta
RM rates highest. The meta RM is trained with binary cross-entropy on (judge prompt,
judgment) pairs labelled by the same rule as RFT: the RFT stage's samples plus fresh
samples of the final GRM at the inference temperature (0.5), so it sees the judgments
it will rate. Unparseable judgments are left out (they never vote).

The classifier starts from the GRM's own weights (a new scalar head on its backbone):
the backbone already reads these prompts. Pairs are tokenised by
``grm.meta_rm.MetaRewardModel.encode``, the code that scores them at inference.

Example::

    meta_model, meta_tokenizer, stats = train_meta_rm(grm_dir, tokenizer, pairs, labels, MetaConfig(steps=150))
"""

from __future__ import annotations

import copy
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from grm.meta_rm import MetaRewardModel

META_MAX_LENGTH = 512  # the prompt's tail (query, responses, output format) + the judgment


@dataclass(frozen=True)
class MetaConfig:
    steps: int = 150
    batch_size: int = 16
    lr: float = 5e-4
    time_limit_s: float | None = None  # stop early when exceeded (a shared CPU's pace varies)
    held_out: float = 0.1  # share of pairs kept out of training to report accuracy and AUC
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"MetaConfig.steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if not 0 <= self.held_out < 1:
            raise ValueError(f"MetaConfig.held_out must be in [0, 1), got {self.held_out}")


def _logits(model, rows: list[list[int]], pad: int) -> torch.Tensor:  # -> [batch]
    # Right padding, as MetaRewardModel scores: the head reads the last non-pad token.
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, :len(r)], mask[j, :len(r)] = torch.tensor(r), 1
    return model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits[:, 0].float()


def _auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def train_meta_rm(grm_model, tokenizer, pairs: Sequence[tuple[str, str]], labels: Sequence[int],
                  cfg: MetaConfig, desc: str = "meta RM"):
    """Return (a trained AutoModelForSequenceClassification, its tokenizer, figures)."""
    from transformers import AutoModelForSequenceClassification

    if not pairs:
        raise ValueError("the meta RM needs at least one (prompt, judgment) pair")

    with tempfile.TemporaryDirectory() as tmp:  # the GRM's backbone under a fresh 1-label head
        grm_model.save_pretrained(tmp)
        torch.manual_seed(cfg.seed)
        model = AutoModelForSequenceClassification.from_pretrained(tmp, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(grm_model.device)
    tokenizer = copy.deepcopy(tokenizer)  # the GRM keeps its own context length
    tokenizer.model_max_length = META_MAX_LENGTH
    encoder = MetaRewardModel(model, tokenizer, max_length=META_MAX_LENGTH)
    rows = [encoder.encode(p, j) for p, j in pairs]
    order = list(range(len(rows)))
    random.Random(f"meta:{cfg.seed}").shuffle(order)
    n_test = int(len(order) * cfg.held_out)
    test, train = order[:n_test], order[n_test:]
    positive = sum(labels[i] for i in train) / max(1, len(train))
    # Weight the positives so both classes pull equally: correct judgments are the majority.
    pos_weight = torch.tensor((1 - positive) / max(positive, 1e-6), device=model.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    rng = random.Random(f"meta-batches:{cfg.seed}")
    model.train()
    start, steps = time.monotonic(), 0
    for step in (bar := tqdm(range(cfg.steps), desc=desc, mininterval=5)):
        if cfg.time_limit_s is not None and time.monotonic() - start > cfg.time_limit_s:
            break
        steps += 1
        batch = rng.sample(train, min(cfg.batch_size, len(train)))
        y = torch.tensor([float(labels[i]) for i in batch], device=model.device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            _logits(model, [rows[i] for i in batch], tokenizer.pad_token_id), y, pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        scores = [s for k in range(0, len(test), 32)
                  for s in torch.sigmoid(_logits(model, [rows[i] for i in test[k:k + 32]], tokenizer.pad_token_id)).tolist()]
    y_test = [labels[i] for i in test]
    acc = sum((s > 0.5) == bool(y) for s, y in zip(scores, y_test)) / max(1, len(test))
    return model, tokenizer, {"pairs": len(rows), "positive_rate": round(positive, 4), "steps": steps,
                   "held_out": len(test), "held_out_accuracy": round(acc, 4),
                   "held_out_auc": None if (a := _auc(scores, y_test)) is None else round(a, 4)}
