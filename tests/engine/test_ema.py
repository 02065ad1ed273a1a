"""Exponential moving average of the weights."""

from __future__ import annotations

import torch
from torch import nn

from modelcycle.engine.ema import EMA


def test_ema_follows_the_weights_with_warm_up():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    ema = EMA(model, decay=0.99)
    assert not any(p.requires_grad for p in ema.model.parameters())
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_mean.fill_(5.0)
    ema.update(model)
    decay = min(0.99, 2 / 11)  # warm-up: (1 + updates) / (10 + updates)
    assert torch.allclose(ema.model[0].weight, torch.full((2, 2), 1 - decay))
    assert torch.equal(ema.model[1].running_mean, torch.full((2,), 5.0))  # buffers are copied
    for _ in range(200):
        ema.update(model)
    assert torch.allclose(ema.model[0].weight, torch.ones(2, 2), atol=0.2)
    state = ema.state_dict()
    other = EMA(model, decay=0.99)
    other.load_state_dict(state)
    assert other.updates == 201 and torch.equal(other.model[0].weight, ema.model[0].weight)
