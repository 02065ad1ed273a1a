"""The preference losses against the papers' formulas, written out again here in plain Python
floats on fixed log-probabilities, so a sign or a β in the wrong place fails to 1e-6."""

from __future__ import annotations

import math

import pytest
import torch

from modelcycle.tasks.preference_loss import PairLogps, bradley_terry_loss, dpo_loss

# summed response log-probabilities and token counts of four pairs
POLICY = {"c": [-12.5, -30.0, -7.25, -18.0], "r": [-14.0, -22.5, -9.0, -18.0]}
REFERENCE = {"c": [-13.0, -28.0, -8.0, -17.5], "r": [-13.5, -23.0, -8.5, -19.0]}
TOKENS = {"c": [10, 24, 5, 12], "r": [11, 15, 6, 12]}


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def pairs(d: dict) -> PairLogps:
    t = torch.tensor
    return PairLogps(
        t(d["c"], dtype=torch.float64),
        t(d["r"], dtype=torch.float64),
        t(TOKENS["c"], dtype=torch.float64),
        t(TOKENS["r"], dtype=torch.float64),
    )


def h(i: int) -> float:
    return (POLICY["c"][i] - REFERENCE["c"][i]) - (POLICY["r"][i] - REFERENCE["r"][i])


def expected(kind: str, i: int, beta: float, eps: float, gamma: float) -> float:
    if kind == "sigmoid":  # Rafailov et al. eq. 7; cDPO (Mitchell 2023) with eps
        return -(1 - eps) * logsig(beta * h(i)) - eps * logsig(-beta * h(i))
    if kind == "hinge":  # SLiC-HF
        return max(0.0, 1 - beta * h(i))
    if kind == "ipo":  # Azar et al. eq. 17
        return (h(i) - 1 / (2 * beta)) ** 2
    avg_c = POLICY["c"][i] / TOKENS["c"][i]
    avg_r = POLICY["r"][i] / TOKENS["r"][i]
    if kind == "simpo":  # Meng et al. eq. 6
        z = beta * avg_c - beta * avg_r - gamma
        return -(1 - eps) * logsig(z) - eps * logsig(-z)
    # orpo: Hong et al. eq. 6-7, odds(y|x) = P / (1 - P) with P the length-normalised likelihood
    p_c, p_r = math.exp(avg_c), math.exp(avg_r)
    ratio = math.log((p_c / (1 - p_c)) / (p_r / (1 - p_r)))
    return -avg_c - beta * logsig(ratio)


@pytest.mark.parametrize("kind", ["sigmoid", "hinge", "ipo", "simpo", "orpo"])
@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.2)])
def test_dpo_losses_match_the_papers_formulas(kind, beta, eps):
    eps = eps if kind in ("sigmoid", "simpo") else 0.0
    out = dpo_loss(kind, pairs(POLICY), pairs(REFERENCE), beta=beta, label_smoothing=eps, simpo_gamma=0.7)
    want = [expected(kind, i, beta, eps, 0.7) for i in range(4)]
    assert out.losses.tolist() == pytest.approx(want, abs=1e-6)


def test_implicit_rewards_are_beta_times_the_log_ratio():
    out = dpo_loss("sigmoid", pairs(POLICY), pairs(REFERENCE), beta=0.25)
    assert out.chosen_rewards.tolist() == pytest.approx(
        [0.25 * (p - r) for p, r in zip(POLICY["c"], REFERENCE["c"], strict=True)]
    )
    assert out.rejected_rewards.tolist() == pytest.approx(
        [0.25 * (p - r) for p, r in zip(POLICY["r"], REFERENCE["r"], strict=True)]
    )


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([-10.0], requires_grad=True)
    rejected = torch.tensor([-10.0], requires_grad=True)
    ones = torch.ones(1)
    policy = PairLogps(chosen, rejected, ones, ones)
    ref = PairLogps(torch.tensor([-10.0]), torch.tensor([-10.0]), ones, ones)
    dpo_loss("sigmoid", policy, ref, beta=0.1).losses.sum().backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()


def test_reference_losses_refuse_to_run_without_a_reference():
    with pytest.raises(ValueError, match="reference"):
        dpo_loss("sigmoid", pairs(POLICY), None, beta=0.1)


def test_bradley_terry_with_and_without_margin():
    chosen, rejected = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.5, 2.0])
    margin = torch.tensor([0.5, 0.0, 1.0])
    plain = bradley_terry_loss(chosen, rejected).tolist()
    assert plain == pytest.approx([-logsig(1.0), -logsig(-1.0), math.log(2)], abs=1e-6)
    with_margin = bradley_terry_loss(chosen, rejected, margin).tolist()
    assert with_margin == pytest.approx([-logsig(0.5), -logsig(-1.0), -logsig(-1.0)], abs=1e-6)
