"""PPO's pieces on small hand-made tensors, each against a loop written from the definition."""

from __future__ import annotations

import math

import pytest
import torch

from modelcycle.tasks.ppo_loss import (
    KLController,
    entropy,
    gae,
    kl_per_token,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)

MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])


def gae_by_hand(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, V after the end = 0."""
    n = len(rewards)
    deltas = [rewards[t] + gamma * (values[t + 1] if t + 1 < n else 0.0) - values[t] for t in range(n)]
    return [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]


def test_gae_matches_the_definition_and_ignores_padding():
    rewards = torch.tensor([[0.1, -0.2, 0.0, 1.0], [0.3, 0.5, 9.0, 9.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 0.2], [0.1, -0.1, 7.0, 7.0]])
    adv, returns = gae(rewards, values, MASK, gamma=0.99, lam=0.9)
    assert adv[0].tolist() == pytest.approx(gae_by_hand([0.1, -0.2, 0.0, 1.0], [0.5, 0.4, 0.3, 0.2], 0.99, 0.9))
    assert adv[1, :2].tolist() == pytest.approx(gae_by_hand([0.3, 0.5], [0.1, -0.1], 0.99, 0.9))
    assert adv[1, 2:].tolist() == [0.0, 0.0]
    assert returns[0].tolist() == pytest.approx((adv[0] + values[0]).tolist())


def test_token_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    rewards = token_rewards(torch.tensor([2.0, -1.0]), kl, MASK, kl_coef=0.5)
    assert rewards[0].tolist() == pytest.approx([-0.05, -0.1, -0.15, -0.2 + 2.0])
    assert rewards[1].tolist() == pytest.approx([-0.25, -0.3 - 1.0, 0.0, 0.0])
    assert kl_per_token(torch.tensor([-1.0]), torch.tensor([-1.5])).item() == pytest.approx(0.5)


def test_policy_loss_clips_the_ratio_and_counts_clipped_tokens():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 1.5]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, clipfrac = policy_loss(new, old, adv, torch.ones(1, 4), clip=0.2)
    # per token: -min(r A, clip(r) A) = max(-rA, -clip(r)A)
    want = [max(-1.5, -1.2), max(0.5, 0.8), max(-1.1, -1.1), max(1.5, 1.2)]
    assert loss.item() == pytest.approx(sum(want) / 4)
    assert clipfrac.item() == pytest.approx(2 / 4)  # tokens 0 and 1 were clipped, 3 is not (worse side)


def test_value_loss_keeps_the_worse_of_clipped_and_unclipped():
    old = torch.tensor([[0.0, 0.0]])
    new = torch.tensor([[1.0, 0.1]])
    returns = torch.tensor([[1.0, 1.0]])
    loss, frac = value_loss(new, old, returns, torch.ones(1, 2), clip=0.2)
    want = [max((1.0 - 1.0) ** 2, (0.2 - 1.0) ** 2), max((0.1 - 1.0) ** 2, (0.1 - 1.0) ** 2)]
    assert loss.item() == pytest.approx(0.5 * sum(want) / 2)
    assert frac.item() == pytest.approx(0.5)


def test_entropy_of_uniform_and_certain_distributions():
    logits = torch.stack([torch.zeros(8), torch.tensor([50.0] + [0.0] * 7)]).unsqueeze(0)  # (1, 2, 8)
    assert entropy(logits, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(math.log(8), abs=1e-5)
    assert entropy(logits, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(0.0, abs=1e-5)


def test_whitening_uses_real_tokens_only():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 100.0, 100.0]])
    out = masked_whiten(values, MASK)
    real = out[MASK.bool()]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert real.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_adaptive_kl_coefficient_follows_ziegler():
    ctl = KLController(0.2, target=6.0, horizon=10000)
    assert ctl.update(kl=12.0, n_steps=256) == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))  # error clipped at +0.2
    before = ctl.value
    assert ctl.update(kl=5.4, n_steps=256) == pytest.approx(before * (1 - 0.1 * 256 / 10000))
    fixed = KLController(0.2)
    assert fixed.update(kl=100.0, n_steps=256) == 0.2
