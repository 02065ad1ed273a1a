"""What the engine asks of a task: the computation of one step, nothing about the loop."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

Sums = dict[str, torch.Tensor]


class Task(Protocol):
    """A task turns a batch into a loss and into *sums* (tensors the engine adds up without a
    host sync); :meth:`summarize` turns the added sums into metrics at log and epoch time.

    The loss is a mean over the batch (the engine scales it for accumulation and for uneven
    shards across processes); the sums are per-sample totals with the same keys for every
    batch, so they can be added across batches and all-reduced across processes."""

    def training_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Sums]: ...

    def validation_step(self, model: nn.Module, batch: Any) -> Sums: ...

    def summarize(self, sums: dict[str, float]) -> dict[str, float]: ...

    # optional: {"train": (...), "val": (...)} metric names, so a bad train.monitor fails at once
    metric_names: dict[str, tuple[str, ...]]


def add_sums(total: Sums, new: Sums, counted: bool = True) -> None:
    """``counted=False`` adds zeros: a stand-in batch that keeps processes in step must leave the
    keys every rank reduces the same, and the figures untouched."""
    for key, value in new.items():
        value = value.detach() if counted else torch.zeros_like(value)
        if key in total:
            total[key] += value
        else:
            total[key] = value.clone()
