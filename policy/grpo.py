"""GRPO maths as small pure torch functions: advantages, the clipped surrogate, k3 KL, loss
aggregation, and DAPO's filter for groups that carry no signal.

Shapes: B completions (num_groups * group_size, grouped consecutively), T tokens per
completion (right-padded); ``mask`` [B, T] is 1 on completion tokens and 0 on padding.
No model, no optimizer, no distributed code: the trainer feeds log-probabilities in and
gets a scalar loss out.

Example::

    advantages = group_advantages(rewards, group_size=4)               # [B]
    loss, stats = grpo_loss(logp, old_logp, ref_logp, advantages, mask,
                            beta=0.04, eps_low=0.2, eps_high=0.28, mode="token")
    loss.backward()

Sources: GRPO, Shao et al. 2024 (DeepSeekMath, arXiv 2402.03300); PPO clipping,
Schulman et al. 2017 (arXiv 1707.06347); Dr. GRPO, Liu et al. 2025 (arXiv 2503.20783);
DAPO, Yu et al. 2025 (arXiv 2503.14476); the k3 KL estimator, Schulman 2020,
"Approximating KL divergence".
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

try:
    from enum import StrEnum
except ImportError:  # Python 3.10
    from grm.types import StrEnum


class AdvantageScale(StrEnum):
    STD = "std"  # GRPO: (r - mean) / (std + eps)
    NONE = "none"  # Dr. GRPO: r - mean, no division by the group's std


class LossMode(StrEnum):
    TOKEN = "token"  # DAPO: sum over all tokens / number of tokens in the batch
    SEQUENCE = "sequence"  # GRPO: mean over each sequence's tokens, then mean over sequences
    CONSTANT = "constant"  # Dr. GRPO: sum / (batch * max_len), a constant normaliser


def _grouped(rewards: Sequence[float | None], group_size: int) -> torch.Tensor:
    """[num_groups, group_size] float64, NaN where a reward is None."""
    if group_size < 1 or len(rewards) % group_size:
        raise ValueError(f"len(rewards)={len(rewards)} must be a positive multiple of group_size={group_size}")
    values = [float("nan") if r is None else float(r) for r in rewards]
    return torch.tensor(values, dtype=torch.float64).view(-1, group_size)


def _informative(r: torch.Tensor) -> torch.Tensor:
    """[num_groups] bool: at least two scored members whose rewards are not all equal."""
    scored = ~torch.isnan(r)
    high = torch.where(scored, r, -torch.inf).amax(dim=1)
    low = torch.where(scored, r, torch.inf).amin(dim=1)
    return (scored.sum(dim=1) >= 2) & (high > low)


def group_advantages(rewards: Sequence[float | None], group_size: int, scale: str = "std",
                     eps: float = 1e-6) -> torch.Tensor:
    """Outcome advantages, one per completion: [B] float32.

    GRPO (Shao et al. 2024, section 4.1.2, outcome supervision): A_i = (r_i - mean(r)) / (std(r) + eps)
    over the completion's group; std is the sample std (Bessel-corrected), as TRL's
    GRPOTrainer computes it. Dr. GRPO (Liu et al. 2025) drops the std: A_i = r_i - mean(r).
    A None reward (unscorable) is left out of its group's mean and std and gets 0, as TRL
    does; a group with fewer than two scored members, or all rewards equal, gets all 0.
    """
    scale = AdvantageScale(scale)
    r = _grouped(rewards, group_size)  # [G, g]
    scored = ~torch.isnan(r)
    count = scored.sum(dim=1, keepdim=True).clamp(min=1)
    zeroed = torch.where(scored, r, 0.0)
    mean = zeroed.sum(dim=1, keepdim=True) / count
    centred = torch.where(scored, r - mean, 0.0)
    if scale is AdvantageScale.STD:
        std = (centred.pow(2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
        centred = centred / (std + eps)
    keep = _informative(r).unsqueeze(1) & scored
    return torch.where(keep, centred, 0.0).reshape(-1).float()


def filter_degenerate_groups(rewards: Sequence[float | None], group_size: int) -> list[bool]:
    """DAPO dynamic sampling (Yu et al. 2025): True for each group worth training on, i.e.
    whose scored rewards are not all equal (so its advantages are not all zero)."""
    return _informative(_grouped(rewards, group_size)).tolist()


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor, eps_low: float = 0.2, eps_high: float = 0.2) -> torch.Tensor:
    """PPO's clipped objective, negated, per token: [B, T], zero on padding.

    -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) with rho = exp(logp - old_logp)
    (Schulman et al. 2017); separate low and high bounds are DAPO's clip-higher.
    """
    rho = torch.exp(logp - old_logp)  # [B, T]
    adv = advantages.unsqueeze(-1)  # [B, 1], the same for every token of a completion
    unclipped = rho * adv
    clipped = torch.clamp(rho, 1 - eps_low, 1 + eps_high) * adv
    return -torch.minimum(unclipped, clipped) * mask


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(d) - d - 1 with d = ref - logp.

    Unbiased and always >= 0 (Schulman 2020); the estimator GRPO uses (Shao et al. 2024, eq. 4).
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def _token_mean(per_token, mask, max_len, num_tokens):
    # DAPO: every token weighs the same. Pass the token count of the whole batch as
    # num_tokens when the batch is split into micro-batches, so their losses add up.
    denom = mask.sum() if num_tokens is None else num_tokens
    return (per_token * mask).sum() / max(float(denom), 1.0)


def _sequence_mean(per_token, mask, max_len, num_tokens):
    # GRPO: 1/|o_i| per sequence, then the mean over sequences.
    per_seq = (per_token * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
    return per_seq.mean()


def _constant_norm(per_token, mask, max_len, num_tokens):
    # Dr. GRPO: divide by a constant (batch size times the generation budget), so no
    # length bias enters through the normaliser.
    if max_len is None:
        raise ValueError("max_len is required for mode 'constant' (the generation budget in tokens)")
    return (per_token * mask).sum() / (per_token.shape[0] * max_len)


_AGGREGATORS: dict[LossMode, Callable[..., torch.Tensor]] = {
    LossMode.TOKEN: _token_mean,
    LossMode.SEQUENCE: _sequence_mean,
    LossMode.CONSTANT: _constant_norm,
}


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token", *,
                   max_len: int | None = None, num_tokens: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    Micro-batches: in "token" mode pass the whole batch's ``num_tokens`` and sum the
    micro-batch losses; in "sequence" and "constant" mode weight each micro-batch loss by
    its share of the batch's sequences (B_micro / B) and sum.
    """
    return _AGGREGATORS[LossMode(mode)](per_token, mask.to(per_token.dtype), max_len, num_tokens)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, beta: float = 0.0, eps_low: float = 0.2,
              eps_high: float = 0.2, mode: str = "token", num_tokens: int | None = None,
              max_len: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss: clipped surrogate + beta * k3 KL per token, aggregated by ``mode``.

    logp, old_logp, ref_logp, mask: [B, T]; advantages: [B]. ``ref_logp`` may be None
    when beta == 0. Stats (floats, over this micro-batch's tokens): policy_loss, kl,
    clip_fraction (tokens whose ratio was clipped, so they give no gradient), ratio_mean.
    """
    mask = mask.to(logp.dtype)
    surrogate = clipped_surrogate(logp, old_logp, advantages, mask, eps_low, eps_high)  # [B, T]
    kl = torch.zeros_like(logp)
    if beta:
        if ref_logp is None:
            raise ValueError("ref_logp is required when beta != 0")
        kl = k3_kl(logp, ref_logp) * mask
    loss = aggregate_loss(surrogate + beta * kl, mask, mode, max_len=max_len, num_tokens=num_tokens)
    with torch.no_grad():
        policy_loss = aggregate_loss(surrogate, mask, mode, max_len=max_len, num_tokens=num_tokens)
        tokens = mask.sum().clamp(min=1)
        rho = torch.exp(logp - old_logp)
        adv = advantages.unsqueeze(-1)
        clipped = ((rho < 1 - eps_low) & (adv < 0)) | ((rho > 1 + eps_high) & (adv > 0))
        stats = {
            "policy_loss": float(policy_loss),
            "kl": float((kl * mask).sum() / tokens),
            "clip_fraction": float((clipped * mask).sum() / tokens),
            "ratio_mean": float((rho * mask).sum() / tokens),
        }
    return loss, stats
