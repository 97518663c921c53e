"""GRPO pieces against hand-computed values: group advantages, the clipped objective with k3 KL, its gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmsrarec_edge.summarize.grpo import group_advantages, grpo_loss


def test_group_advantages_by_hand():
    r = np.array([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    adv = group_advantages(r, 3, eps=0.0 + 1e-12)
    # group 1: mean 2, sample std 1 -> -1, 0, 1; group 2: all equal -> 0
    np.testing.assert_allclose(adv, [-1, 0, 1, 0, 0, 0], atol=1e-9)
    adv = group_advantages(np.array([0.0, 1.0]), 2, eps=1e-4)
    s = math.sqrt(0.5)
    np.testing.assert_allclose(adv, [-0.5 / (s + 1e-4), 0.5 / (s + 1e-4)])


def test_loss_on_policy_without_kl_is_minus_mean_advantage():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    loss, stats = grpo_loss(logp, logp.detach(), None, mask, adv, beta=0.0, clip_eps=0.2)
    assert loss.item() == pytest.approx(-(2.0 + -1.0) / 2)  # ratio 1 everywhere
    loss.backward()
    # d loss / d logp[i, t] = -A_i / (len_i * N) on real tokens, 0 on padding
    np.testing.assert_allclose(logp.grad.numpy(), [[-2 / 4, -2 / 4, 0], [1 / 2, 0, 0]], atol=1e-7)
    assert stats["kl"] == 0.0 and stats["clip_frac"] == 0.0


def test_loss_with_clipping_and_k3_kl_by_hand():
    logp = torch.tensor([[math.log(0.5), math.log(0.9)]])
    old = torch.tensor([[math.log(0.25), math.log(0.9)]])  # ratio 2 (clipped to 1.2), then 1
    ref = torch.tensor([[math.log(0.4), math.log(0.6)]])
    mask = torch.ones(1, 2)
    beta, eps = 0.1, 0.2
    for a in (1.0, -1.0):
        loss, stats = grpo_loss(logp, old, ref, mask, torch.tensor([a]), beta=beta, clip_eps=eps)
        # token 1: ratio 2: A>0 -> min(2A, 1.2A) = 1.2A; A<0 -> min(-2, -1.2) = -2
        pg1 = -(1.2 * a if a > 0 else 2 * a)
        pg2 = -a
        k3 = [0.4 / 0.5 - math.log(0.4 / 0.5) - 1, 0.6 / 0.9 - math.log(0.6 / 0.9) - 1]
        expected = ((pg1 + beta * k3[0]) + (pg2 + beta * k3[1])) / 2
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        assert stats["kl"] == pytest.approx(sum(k3) / 2, rel=1e-5)
        assert stats["clip_frac"] == pytest.approx(0.5)


def test_kl_is_zero_at_the_reference_and_positive_elsewhere():
    logp = torch.log(torch.tensor([[0.3, 0.6]]))
    _, s0 = grpo_loss(logp, logp, logp, torch.ones(1, 2), torch.zeros(1), beta=0.5, clip_eps=0.2)
    _, s1 = grpo_loss(logp, logp, logp - 0.3, torch.ones(1, 2), torch.zeros(1), beta=0.5, clip_eps=0.2)
    assert s0["kl"] == pytest.approx(0.0, abs=1e-9) and s1["kl"] > 0
