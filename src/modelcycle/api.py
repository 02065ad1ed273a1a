"""The public Python API; every CLI verb is a thin call into one of these. It only re-exports:
the work lives in the services below it (training/, evaluation/, tuning/, export/, compress/),
which never import this module."""

from __future__ import annotations

from pathlib import Path

from modelcycle.compress.prune import prune_model
from modelcycle.config import load_config
from modelcycle.data.demo import write_digits
from modelcycle.data.prepare import PrepareResult
from modelcycle.data.prepare import prepare as _prepare
from modelcycle.evaluation.crossval import crossval
from modelcycle.evaluation.service import compare, evaluate, predict
from modelcycle.export.export import export as export_model
from modelcycle.runs import Run
from modelcycle.tasks.plugin import SetupContext, TaskParts, TaskPlugin
from modelcycle.tasks.registry import register_task
from modelcycle.training.service import distill, train, train_ppo
from modelcycle.tuning import tune_recipe as tune

__all__ = [
    "prepare",
    "train",
    "train_ppo",
    "distill",
    "evaluate",
    "predict",
    "compare",
    "crossval",
    "export_model",
    "prune_model",
    "write_digits",
    "load_config",
    "tune",
    "Run",
    "register_task",
    "TaskPlugin",
    "TaskParts",
    "SetupContext",
]


def prepare(src: str | Path, out: str | Path, val: float = 0.2, test: float = 0.0, seed: int = 0) -> PrepareResult:
    """Scan a folder of class folders (or a manifest), verify images, write a stratified split."""
    return _prepare(src, out, val=val, test=test, seed=seed)
