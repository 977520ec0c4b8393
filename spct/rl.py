"""Rule-based online RL on the GRM with GRPO, SPCT's second stage (Liu et al. 2025, section 3.2).

Each step draws prompts, samples a group of 4 judgments per prompt from the current
model (each sample with its own response order, as at inference), and rewards a judgment
+1 when its scores put the labelled best response strictly on top, -1 otherwise,
malformed or cut-off output included. There is no format reward: the KL penalty to the
reference (the model RL started from) is what keeps the format stable (the paper used
a large beta, 0.08, for the 27B model).

Departures from textbook GRPO, for a 4M-parameter model on 2 CPU cores: one gradient
step per large batch of rollouts, so the ratio is 1 and clipping never binds (the loss is
the policy gradient with the group-normalised advantage plus beta * k3 KL); token-level
loss normalisation (DAPO). The maths is ``policy.grpo``. The batch is large and the
learning rate low (32 prompts x 4 at 2e-5): 8 prompts at 2e-4 made greedy accuracy fall
(grm/models/MODEL_CARD.md).

Example::

    stats = train_rl(model, tokenizer, items, RLConfig(steps=40, prompts_per_step=32, beta=0.08))
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from grm.judge import GenerativeRewardModel
from grm.seeds import mix_seed
from grm.transformers_engine import TransformersEngine
from grm.types import SamplingOptions
from policy.grpo import AdvantageScale, LossMode, group_advantages, grpo_loss
from policy.logprobs import batch_logprobs, target_ids
from spct.data import SPCT_TEMPLATE, Example, LabeledItem, is_correct, teacher_batches

GROUP_SIZE = 4  # paper


@dataclass(frozen=True)
class RLConfig:
    steps: int = 40
    prompts_per_step: int = 32  # each gets a group of GROUP_SIZE samples
    lr: float = 2e-5
    beta: float = 0.08  # KL coefficient
    temperature: float = 1.0  # rollout temperature
    max_new_tokens: int = 256
    seed: int = 0
    advantage_scale: str = "std"  # "std" (GRPO) or "none" (Dr. GRPO: r - mean)
    loss_mode: str = "token"  # see policy.grpo.aggregate_loss
    teacher_coef: float = 0.0  # weight of an SFT term on teacher judgments (0: pure RL, the paper)
    teacher_batch: int = 16
    time_limit_s: float | None = None  # stop early once this much time has passed (a CPU budget)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.prompts_per_step < 1:
            raise ValueError(f"RLConfig.steps and prompts_per_step must be >= 1, got {self.steps}, "
                             f"{self.prompts_per_step}")
        if self.beta < 0:
            raise ValueError(f"RLConfig.beta must be >= 0, got {self.beta}")
        if self.teacher_coef < 0:
            raise ValueError(f"RLConfig.teacher_coef must be >= 0, got {self.teacher_coef}")
        for name, allowed in (("advantage_scale", AdvantageScale), ("loss_mode", LossMode)):
            if getattr(self, name) not in {a.value for a in allowed}:
                raise ValueError(f"RLConfig.{name} must be one of {[a.value for a in allowed]}, "
                                 f"got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Rollout:
    example: Example  # prompt ids + the sampled token ids (+ EOS when it finished)
    reward: float  # +1 correct, -1 otherwise
    valid: bool


def rollouts(grm: GenerativeRewardModel, items: Sequence[LabeledItem], cfg: RLConfig, seed: int) -> list[Rollout]:
    """GROUP_SIZE samples per item, consecutive, with the sampled token ids kept for the loss.

    Drawn through the judge's own sampling seam, so a rollout with a given seed is the
    judgment the served judge would write for that seed.
    """
    if grm.template.pointwise:  # one prompt per response: a sample is several texts, not one
        raise ValueError(f"online RL trains on judgments of all responses at once; {grm.template.version} is pointwise")
    plans = [grm.plan(it.item, SamplingOptions(k=GROUP_SIZE, temperature=cfg.temperature,
                                               max_new_tokens=cfg.max_new_tokens, seed=mix_seed(seed, i)))
             for i, it in enumerate(items)]
    eos = grm.engine.tokenizer.eos_token_id
    out = []
    for labeled, samples in zip(items, grm.sample(plans)):
        for s in samples:
            scores = s.judgment.scores
            out.append(Rollout(Example(s.prompt.ids, target_ids(s.completion, eos)),
                               1.0 if is_correct(scores, labeled) else -1.0, scores is not None))
    return out


def train_rl(model, tokenizer, items: Sequence[LabeledItem], cfg: RLConfig, desc: str = "online RL") -> dict:
    """GRPO on the rule-based reward; ``model`` is trained in place. Returns per-step figures."""
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    grm = GenerativeRewardModel(TransformersEngine(model, tokenizer, model_id="rl"), SPCT_TEMPLATE)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.95))
    rng = random.Random(f"rl:{cfg.seed}")
    by_n: dict[int, list[LabeledItem]] = {}
    for it in items:
        by_n.setdefault(len(it.item.responses), []).append(it)
    sizes, weights = zip(*((n, len(g)) for n, g in sorted(by_n.items())))
    teacher = (teacher_batches(tokenizer, SPCT_TEMPLATE, items, cfg.teacher_batch, cfg.seed + 2)
               if cfg.teacher_coef else None)
    history = []
    start = time.monotonic()
    for step in (bar := tqdm(range(cfg.steps), desc=desc, mininterval=5)):
        if cfg.time_limit_s is not None and step and time.monotonic() - start > cfg.time_limit_s:
            break
        group = by_n[rng.choices(sizes, weights)[0]]  # one N per step: the prompts share a prefix
        batch = rng.sample(group, min(cfg.prompts_per_step, len(group)))
        model.eval()
        rolls = rollouts(grm, batch, cfg, seed=mix_seed("rl", cfg.seed, step))
        rewards = [r.reward for r in rolls]
        advantages = group_advantages(rewards, GROUP_SIZE, scale=cfg.advantage_scale).to(model.device)  # [B]
        examples = [r.example for r in rolls]
        model.train()
        logp, mask = batch_logprobs(model, examples)  # [B, T]
        with torch.no_grad():
            ref_logp = batch_logprobs(reference, examples)[0] if cfg.beta else None
        loss, stats = grpo_loss(logp, logp.detach(), ref_logp, advantages, mask, beta=cfg.beta,
                                mode=cfg.loss_mode, max_len=cfg.max_new_tokens + 1)
        if teacher is not None:  # departure (as in RFT): keep the evidence the teacher taught
            t_logp, t_mask = batch_logprobs(model, next(teacher))
            loss = loss + cfg.teacher_coef * -(t_logp * t_mask).sum() / t_mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append({"reward": sum(rewards) / len(rewards), "valid": sum(r.valid for r in rolls) / len(rolls),
                        "kl": stats["kl"]})
        recent = history[-10:]
        bar.set_postfix(reward=f"{sum(h['reward'] for h in recent) / len(recent):+.3f}",
                        kl=f"{stats['kl']:.4f}")
    model.eval()
    half = max(1, len(history) // 2)

    def mean(rows, key):
        return round(sum(h[key] for h in rows) / max(1, len(rows)), 4)

    return {"steps": len(history), "beta": cfg.beta, "lr": cfg.lr, "group_size": GROUP_SIZE,
            "prompts_per_step": cfg.prompts_per_step, "advantage_scale": cfg.advantage_scale,
            "loss_mode": cfg.loss_mode, "teacher_coef": cfg.teacher_coef,
            "reward_first_half": mean(history[:half], "reward"), "reward_second_half": mean(history[half:], "reward"),
            "valid_second_half": mean(history[half:], "valid"), "kl_last": round(history[-1]["kl"], 5)}
