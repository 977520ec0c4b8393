"""GRPO maths: hand-computed advantages, clipping, k3 KL and aggregation, and the
micro-batch invariant (summed micro-batch losses give the whole batch's gradient)."""

import math

import pytest
import torch

from policy.grpo import (aggregate_loss, clipped_surrogate, filter_degenerate_groups, group_advantages,
                         grpo_loss, k3_kl)


def close(tensor, expected, tol=1e-5):
    assert torch.allclose(tensor.double(), torch.tensor(expected, dtype=torch.float64), atol=tol), tensor


# ---------------------------------------------------------------- advantages

def test_standard_advantages_hand_computed():
    # mean 0.5; sample std sqrt(4 * 0.25 / 3) = 0.57735; 0.5 / 0.57735 = 0.866025
    close(group_advantages([1, 0, 0, 1], group_size=4), [0.866025, -0.866025, -0.866025, 0.866025])


def test_dr_grpo_advantages_drop_the_std():
    close(group_advantages([1, 0, 0, 1], group_size=4, scale="none"), [0.5, -0.5, -0.5, 0.5])
    close(group_advantages([3, 1, 2, 10], group_size=4, scale="none"), [-1, -3, -2, 6])


def test_groups_are_consecutive_and_independent():
    # group 1: mean 0.5, sample std sqrt(0.5) -> +-0.5 / 0.70711; group 2 all equal -> 0
    close(group_advantages([1, 0, 7, 7], group_size=2), [0.707107, -0.707107, 0, 0])


@pytest.mark.parametrize("scale", ["std", "none"])
def test_group_advantages_sum_to_zero(scale):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(6 * 4, generator=gen).tolist()
    adv = group_advantages(rewards, group_size=4, scale=scale).view(6, 4)
    assert torch.allclose(adv.sum(dim=1), torch.zeros(6), atol=1e-5)


def test_unscorable_member_gets_zero_and_leaves_the_baseline():
    # scored [3, 1]: mean 2 (not 4/3, as it would be if None counted as 0); sample std sqrt(2)
    close(group_advantages([3, None, 1], group_size=3), [1 / math.sqrt(2), 0, -1 / math.sqrt(2)])
    close(group_advantages([3, None, 1], group_size=3, scale="none"), [1, 0, -1])
    # scored [2, 4, 0]: mean 2, sample std sqrt((0 + 4 + 4) / 2) = 2
    close(group_advantages([2, None, 4, 0], group_size=4), [0, 0, 1, -1])


def test_degenerate_groups_give_zero_advantages():
    close(group_advantages([5, 5, 5, 5], group_size=4), [0, 0, 0, 0])
    close(group_advantages([0.1, 0.1, 0.1], group_size=3, scale="none"), [0, 0, 0])
    close(group_advantages([None, 3, None, None], group_size=4), [0, 0, 0, 0])
    adv = group_advantages([None, None], group_size=2)
    assert not torch.isnan(adv).any()
    close(adv, [0, 0])


def test_group_advantages_validate_arguments():
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages([1, 0, 1], group_size=2)
    with pytest.raises(ValueError):
        group_advantages([1, 0], group_size=2, scale="mad")


def test_filter_degenerate_groups():
    rewards = [1, 0, 7, 7, None, None, 3, None, 2, None, 2, 3]
    assert filter_degenerate_groups(rewards, group_size=2) == [True, False, False, False, False, True]


# ---------------------------------------------------------------- clipped surrogate

def test_clipping_at_both_bounds_for_both_signs():
    # tokens with ratio 1.5 and 0.5; eps_low 0.2 -> lower bound 0.8, eps_high 0.28 -> upper 1.28
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[1.5, 0.5], [0.5, 1.5]])).requires_grad_()
    adv = torch.tensor([2.0, -2.0])
    loss = clipped_surrogate(logp, old, adv, torch.ones(2, 2), eps_low=0.2, eps_high=0.28)
    # A=+2: ratio 1.5 clipped to 1.28 -> -2.56; ratio 0.5 not clipped (min picks 1.0) -> -1.0
    # A=-2: ratio 0.5 clipped to 0.8 -> +1.6;  ratio 1.5 not clipped (min picks -3.0) -> +3.0
    close(loss, [[-2.56, -1.0], [1.6, 3.0]])
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    # clipped tokens carry no gradient; unclipped ones d(-rho*A)/dlogp = -rho*A
    close(grad, [[0.0, -1.0], [0.0, 3.0]])


def test_surrogate_is_zero_on_padding_and_advantage_broadcasts():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    loss = clipped_surrogate(logp, logp, torch.tensor([0.5]), torch.tensor([[1.0, 1.0, 0.0]]))
    close(loss, [[-0.5, -0.5, 0.0]])  # ratio 1 everywhere


# ---------------------------------------------------------------- k3 KL

def test_k3_kl_values():
    logp = torch.log(torch.tensor([0.5, 0.3]))
    close(k3_kl(logp, logp), [0.0, 0.0])
    # d = ln(0.25 / 0.5) = -ln 2: exp(d) - d - 1 = 0.5 + 0.693147 - 1
    close(k3_kl(torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))), [0.193147])
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(1000, generator=gen) * 3, torch.randn(1000, generator=gen) * 3
    assert (k3_kl(a, b) >= 0).all()


# ---------------------------------------------------------------- aggregation

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_aggregation_modes_hand_computed():
    assert aggregate_loss(PER_TOKEN, MASK, "token").item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert aggregate_loss(PER_TOKEN, MASK, "token", num_tokens=8).item() == pytest.approx(10 / 8)
    assert aggregate_loss(PER_TOKEN, MASK, "sequence").item() == pytest.approx((6 / 3 + 4 / 1) / 2)
    assert aggregate_loss(PER_TOKEN, MASK, "constant", max_len=5).item() == pytest.approx(10 / (2 * 5))
    with pytest.raises(ValueError, match="max_len"):
        aggregate_loss(PER_TOKEN, MASK, "constant")
    with pytest.raises(ValueError):
        aggregate_loss(PER_TOKEN, MASK, "median")


def _batch(seed=0, batch=6, width=5):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 2, 4, 1, 3, 5])[:batch]
    mask = (torch.arange(width) < lengths.unsqueeze(1)).float()  # [B, T]
    logp = (-torch.rand(batch, width, generator=gen) * 3).requires_grad_()
    old = (logp + torch.randn(batch, width, generator=gen) * 0.3).detach()
    ref = (logp + torch.randn(batch, width, generator=gen) * 0.3).detach()
    adv = torch.randn(batch, generator=gen)
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("mode", ["token", "sequence", "constant"])
def test_micro_batches_give_the_whole_batch_gradient(mode):
    logp, old, ref, adv, mask = _batch()
    kwargs = dict(beta=0.08, eps_low=0.2, eps_high=0.28, mode=mode, max_len=5)
    whole, _ = grpo_loss(logp, old, ref, adv, mask, num_tokens=None, **kwargs)
    (whole_grad,) = torch.autograd.grad(whole, logp)

    total_tokens = int(mask.sum())
    summed = 0.0
    for part in (slice(0, 2), slice(2, 6)):
        loss, _ = grpo_loss(logp[part], old[part], ref[part], adv[part], mask[part],
                            num_tokens=total_tokens if mode == "token" else None, **kwargs)
        share = 1.0 if mode == "token" else (part.stop - part.start) / 6
        summed = summed + share * loss
    (micro_grad,) = torch.autograd.grad(summed, logp)
    assert torch.allclose(summed, whole, atol=1e-6)
    assert torch.allclose(micro_grad, whole_grad, atol=1e-6)


def test_grpo_loss_combines_surrogate_and_kl():
    logp, old, ref, adv, mask = _batch(seed=3)
    loss, stats = grpo_loss(logp, old, ref, adv, mask, beta=0.5, mode="token")
    surrogate = clipped_surrogate(logp, old, adv, mask)
    expected = aggregate_loss(surrogate + 0.5 * k3_kl(logp, ref) * mask, mask, "token")
    assert torch.allclose(loss, expected)
    assert stats["policy_loss"] == pytest.approx(aggregate_loss(surrogate, mask, "token").item())
    assert stats["kl"] > 0 and 0 <= stats["clip_fraction"] <= 1
    no_kl, stats0 = grpo_loss(logp, old, None, adv, mask, beta=0.0)
    assert stats0["kl"] == 0 and torch.allclose(no_kl, aggregate_loss(surrogate, mask, "token"))
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, None, adv, mask, beta=0.1)
