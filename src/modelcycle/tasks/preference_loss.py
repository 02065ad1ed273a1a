"""Losses that learn from preference pairs, as pure functions of log-probabilities and rewards,
so they are tested against the papers' formulas without a model in the way.

Every function takes per-pair tensors of shape ``(B,)`` and returns per-pair losses (the caller
takes the mean), so the engine's summed metrics see each pair once.

* Bradley–Terry (reward model): ``-log σ(r_c - r_r - m)``; the optional margin ``m`` asks the
  model to separate pairs rated far apart by more (Touvron et al. 2023, Llama 2).
* DPO family, on summed response log-probabilities of the policy (``π``) and the frozen
  reference (``ρ``), with ``h = (π_c - ρ_c) - (π_r - ρ_r)``:
  - ``sigmoid`` (Rafailov et al. 2023): ``-(1-ε) log σ(βh) - ε log σ(-βh)``; ε is label smoothing,
    the conservative DPO of Mitchell 2023 for pairs that may be mislabelled;
  - ``hinge`` (SLiC, Zhao et al. 2023): ``max(0, 1 - βh)``;
  - ``ipo`` (Azar et al. 2023): ``(h - 1/(2β))²``, which does not push ``h`` to infinity on
    deterministic preferences;
  - ``simpo`` (Meng et al. 2024), no reference: ``-log σ(β(π̄_c - π̄_r) - γ)`` on length-averaged
    log-probabilities ``π̄``; label smoothing as for sigmoid;
  - ``orpo`` (Hong et al. 2024), no reference: ``-π̄_c - β log σ(log odds(π̄_c) - log odds(π̄_r))``
    with ``log odds(p) = p - log(1 - e^p)``: the SFT loss on the chosen answer plus an odds-ratio
    term weighted by β (the λ of the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DPO_LOSSES = ("sigmoid", "hinge", "ipo", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``log p(token_t | tokens_<t)`` for t >= 1, shape (B, L-1): the logits at t-1 predict token t.
    Gather minus logsumexp instead of a full log-softmax: one (B, L, V) tensor fewer."""
    logits = logits[:, :-1].float()
    taken = logits.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return taken - torch.logsumexp(logits, dim=-1)


def response_logps(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of each row's response tokens, and how many there are."""
    mask = response_mask[:, 1:].float()
    return (token_logprobs(logits, input_ids) * mask).sum(-1), mask.sum(-1)


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Per-pair ``-log σ(r_c - r_r - margin)``."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


@dataclass
class PairLogps:
    """Summed log-probabilities of the chosen and rejected responses, and their token counts
    (for the length-averaged losses)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    def averages(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.chosen / self.chosen_tokens.clamp(min=1), self.rejected / self.rejected_tokens.clamp(min=1)


@dataclass
class PreferenceOutput:
    losses: torch.Tensor  # (B,)
    chosen_rewards: torch.Tensor  # (B,) implicit rewards, detached
    rejected_rewards: torch.Tensor


def dpo_loss(
    kind: str,
    policy: PairLogps,
    reference: PairLogps | None,
    beta: float,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
) -> PreferenceOutput:
    """The per-pair loss of ``kind`` (one of :data:`DPO_LOSSES`) and the implicit rewards:
    ``β(π - ρ)`` with a reference, ``β π̄`` for the reference-free losses."""
    if kind not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss {kind!r}; one of {', '.join(DPO_LOSSES)}")
    eps = label_smoothing
    if kind in REFERENCE_FREE:
        avg_c, avg_r = policy.averages()
        if kind == "simpo":
            logits = beta * (avg_c - avg_r) - simpo_gamma
            losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
        else:
            # log(1 - e^p) as log(-expm1(p)): exact for p near 0, where 1 - e^p cancels
            log_odds = (avg_c - torch.log(-torch.expm1(avg_c))) - (avg_r - torch.log(-torch.expm1(avg_r)))
            losses = -avg_c - beta * F.logsigmoid(log_odds)
        return PreferenceOutput(losses, (beta * avg_c).detach(), (beta * avg_r).detach())
    if reference is None:
        raise ValueError(f"dpo loss {kind!r} needs the reference model's log-probabilities")
    chosen_ratio = policy.chosen - reference.chosen
    rejected_ratio = policy.rejected - reference.rejected
    h = chosen_ratio - rejected_ratio
    if kind == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif kind == "hinge":
        losses = torch.relu(1 - beta * h)
    else:  # ipo
        losses = (h - 1 / (2 * beta)) ** 2
    return PreferenceOutput(losses, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach())
