"""Exponential moving average of weights (Polyak averaging), evaluated and exported when on."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        # warm-up as in timm/TF: early averages do not drag towards the random init
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_params = [p for p in self.model.parameters() if p.dtype.is_floating_point]
        params = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(ema_params, params, 1 - decay)
        for ema_buf, buf in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_buf.copy_(buf)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]
