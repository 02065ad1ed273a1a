"""A task written outside modelcycle, as a user would: a small regression (y = a noisy function of
four numbers, an MLP, MSE) on rows kept in JSON, so no image is decoded. Nothing in src/ names it.

The engine's own tests train on it in their process (registered by tests/engine/conftest.py),
and test_task_plugin.py and test_resume.py train it in other processes, which find it through
MODELCYCLE_TASKS=stub_task with this folder on PYTHONPATH (stub_runs.py).

``model.args``: ``width`` (hidden units, 16); ``dropout`` (0.2, so that a resume must restore the
RNG; 0.0 where a test compares weights of differently batched runs); ``step_sleep`` (seconds each
training step sleeps, so that a kill lands mid-run); ``nan_after`` (training forwards before the
model returns NaN, for a non-finite loss on cue).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from modelcycle import runs
from modelcycle.data.datasets import memory_loader
from modelcycle.errors import ConfigError
from modelcycle.tasks.plugin import TaskParts, TaskPlugin

NAME = "stub_regression"


def write_data(root: Path, train: int = 240, val: int = 64) -> Path:
    """``root/train.json`` and ``root/val.json``: {"x": rows of 4 numbers, "y": a number each}."""
    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", train), ("val", val)):
        x = torch.randn(n, 4, generator=gen)
        y = torch.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + 0.05 * torch.randn(n, generator=gen)
        (root / f"{split}.json").write_text(json.dumps({"x": x.tolist(), "y": y.tolist()}))
    return root


class GoesNaN(nn.Module):
    """``net`` for ``good`` training forwards, then NaN."""

    def __init__(self, net: nn.Module, good: int):
        super().__init__()
        self.net, self.good, self.calls = net, good, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls > self.good:
                out = out * float("nan")
        return out


def build(args: dict) -> nn.Module:
    width, dropout = int(args.get("width", 16)), float(args.get("dropout", 0.2))
    net = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Dropout(dropout), nn.Linear(width, 1))
    return GoesNaN(net, int(args["nan_after"])) if "nan_after" in args else net


def rows(root, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = json.loads((Path(root) / f"{split}.json").read_text())
    return torch.tensor(data["x"]), torch.tensor(data["y"])


class Rows(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key  # training's sampler adds an augmentation seed
        return self.x[index], self.y[index]


def collate(batch):
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


class Regression:
    metric_names = {"train": ("loss",), "val": ("loss",)}

    def __init__(self, step_sleep: float = 0.0):
        self.step_sleep = step_sleep

    def training_step(self, model, batch):
        if self.step_sleep:
            time.sleep(self.step_sleep)
        x, y = batch
        loss = nn.functional.mse_loss(model(x)[:, 0], y)
        return loss, {"loss": loss.detach() * len(y), "count": torch.tensor(float(len(y)))}

    def validation_step(self, model, batch):
        x, y = batch
        loss = nn.functional.mse_loss(model(x)[:, 0], y, reduction="sum")
        return {"loss": loss, "count": torch.tensor(float(len(y)))}

    def summarize(self, sums):
        return {"loss": sums["loss"] / max(sums.get("count", 0.0), 1.0)}


def setup(config, ctx) -> TaskParts:
    if not config.data.root:
        raise ConfigError("data.root: the folder with train.json and val.json")
    torch.manual_seed(config.train.seed)
    model = build(config.model.args)
    t, root = config.train, Path(config.data.root)
    train = memory_loader(Rows(*rows(root, "train")), collate, t.batch_size, True, seed=t.seed)
    val = memory_loader(Rows(*rows(root, "val")), collate, config.eval.batch_size, False, seed=t.seed)
    meta = {"task": NAME, "backend": "torch", "args": dict(config.model.args), "data_root": str(root)}
    task = Regression(float(config.model.args.get("step_sleep", 0.0)))
    return TaskParts(task, model, train, val, meta, runs.write_package)


def evaluate(run, split="val", data=None, backend="auto") -> dict:
    manifest = runs.read_manifest(run.path if hasattr(run, "path") else run)
    model = build(manifest["args"])
    model.load_state_dict(load_file(Path(manifest["_dir"]) / manifest["weights"]["file"]))
    x, y = rows(data or manifest["data_root"], split)
    with torch.no_grad():
        mse = float(nn.functional.mse_loss(model.eval()(x)[:, 0], y))
    return {"task": NAME, "split": split, "mse": mse, "num_samples": len(y)}


PLUGIN = TaskPlugin(
    name=NAME,
    setup=setup,
    evaluate=evaluate,
    defaults={"train": {"monitor": "val_loss", "schedule": "none"}},
    summary_metrics=("val_loss",),
    description="the engine tests' own task",
)
