"""The reference profile from the validation pass training does anyway.

A profile needs the model's view of the validation images: their input features, logits and
embeddings (see monitor/profile.py). Training computes the same forward passes every epoch, so
:class:`ValidationRecorder`, a training callback, keeps those of the packaged epoch (the best
one) and the profile after training costs no pass of its own: a few numpy reductions per
validation batch instead of decoding and running the validation images once more (4 s of a
resnet18 run's 60 here; benchmarks/bench_whole_process.py).

It records only what is exactly what a fresh pass would see, and gives nothing otherwise (the
profile then makes its own pass): one process (several ranks each see a part), fp32 (autocast
logits differ), no ``torch.compile`` (hooks on a compiled model), a model returning a logits
tensor, and a validation set that is the profile's reference images in order.

This module imports only numpy, torch and the feature functions, so training loads it cheaply.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from modelcycle.engine import distributed
from modelcycle.engine.callbacks import Callback
from modelcycle.monitor import features as feats


class Outputs(NamedTuple):
    """What the model made of the reference images: input features per column, logits, embeddings
    (the head's input; None without one) and the head's (weight, bias)."""

    columns: dict[str, np.ndarray]
    logits: np.ndarray
    embeddings: np.ndarray | None
    head: tuple[np.ndarray, np.ndarray] | None


def sample_indices(count: int, limit: int) -> np.ndarray:
    """Which of ``count`` images the profile reads: all, or the same ``limit`` of them every time."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, limit, replace=False))


def classifier_head(model: nn.Module) -> nn.Linear | None:
    """The layer whose input is the embedding: our networks' ``head``, else the last Linear."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def head_arrays(head: nn.Linear | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The head's weight and bias as float64 arrays (a copy: training may go on changing it)."""
    if head is None:
        return None
    weight = head.weight.detach().double().cpu().numpy().copy()
    bias = head.bias.detach().double().cpu().numpy().copy() if head.bias is not None else np.zeros(len(weight))
    return weight, bias


class ValidationRecorder(Callback):
    """Keeps the outputs of the validation pass of the best epoch so far (``train.monitor``'s),
    which is the epoch the package is written from."""

    def __init__(self, items: list, preprocessing: dict, limit: int):
        self.items = items
        self.mean, self.std = feats.pixel_scale(preprocessing)
        self.keep = sample_indices(len(items), limit)
        self.best: tuple[int, Outputs] | None = None  # (epoch, its outputs)
        self._pass: tuple[int, Outputs] | None = None
        self._hooks: list = []
        self._parts: dict[str, list] = {}
        self._seen = 0
        self._head: nn.Linear | None = None

    def outputs_for(self, items: list) -> Outputs | None:
        """The recorded outputs if they are of exactly these reference images."""
        if self.best is None or [self.items[i] for i in self.keep] != items:
            return None
        return self.best[1]

    # ------------------------------------------------------------------ the training hooks

    def on_validation_start(self, trainer: Any, model: nn.Module) -> None:
        self._pass, self._parts, self._seen = None, {"logits": [], "embeddings": []}, 0
        cfg = trainer.cfg
        dataset = getattr(trainer.val_loader, "dataset", None)
        if (
            distributed.world_size() > 1
            or cfg.precision != "fp32"
            or cfg.compile
            or getattr(dataset, "items", None) is not self.items
        ):
            self._parts = {}
            return
        self._hooks.append(model.register_forward_hook(self._outputs))
        if (head := classifier_head(model)) is not None:
            self._hooks.append(head.register_forward_hook(self._embeddings))
        self._head = head

    def on_validation_end(self, trainer: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        parts = self._parts
        if not parts or self._seen != len(self.items) or not parts["logits"]:
            return  # not recorded, or not every image went through the model exactly once
        embeddings = parts.pop("embeddings")
        logits = parts.pop("logits")
        self._pass = (
            trainer.state.epoch + 1,
            Outputs(
                {name: np.concatenate(values) for name, values in parts.items()},
                np.concatenate(logits).astype(np.float64),
                np.concatenate(embeddings).astype(np.float64) if len(embeddings) == len(logits) else None,
                head_arrays(self._head),
            ),
        )

    def on_epoch_end(self, trainer: Any, metrics: dict) -> None:
        if trainer.state.best_epoch == trainer.state.epoch:  # this epoch is the new best: its pass, or none
            self.best = self._pass if self._pass is not None and self._pass[0] == trainer.state.epoch else None
        self._pass = None

    # ------------------------------------------------------------------ the forward hooks

    def _outputs(self, _module: nn.Module, inputs: tuple, output: Any) -> None:
        if not self._parts:
            return
        if not isinstance(output, torch.Tensor) or not inputs or not isinstance(inputs[0], torch.Tensor):
            self._parts = {}  # a model of another shape (a Hugging Face output object): a pass of its own
            return
        rows = self._rows(len(output))
        images = inputs[0].detach().float().cpu().numpy()[rows]
        for name, values in feats.input_features(images, self.mean, self.std).items():
            self._parts.setdefault(name, []).append(values)
        self._parts["logits"].append(output.detach().float().cpu().numpy()[rows])
        self._seen += len(output)

    def _embeddings(self, _module: nn.Module, inputs: tuple, _output: Any) -> None:
        if self._parts:
            start = self._seen  # the head runs before the model's own hook: this batch starts here
            rows = self._rows(len(inputs[0]), start)
            self._parts["embeddings"].append(inputs[0].detach().float().cpu().numpy()[rows])

    def _rows(self, count: int, start: int | None = None) -> np.ndarray:
        """Positions within this batch of the images the profile keeps."""
        start = self._seen if start is None else start
        kept = self.keep[(self.keep >= start) & (self.keep < start + count)]
        return kept - start
