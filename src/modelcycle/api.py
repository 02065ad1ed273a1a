"""The public Python API; every CLI verb is a thin call into one of these. It only re-exports:
the work lives in the services below it (training/, evaluation/, tuning/, export/, compress/),
which never import this module."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelcycle.compress.prune import prune_model
from modelcycle.compress.quantize import quantize_int8
from modelcycle.config import load_config
from modelcycle.data.demo import write_digits
from modelcycle.data.prepare import PrepareResult
from modelcycle.data.prepare import prepare as _prepare
from modelcycle.evaluation.bench import bench
from modelcycle.evaluation.crossval import crossval
from modelcycle.evaluation.service import compare, evaluate, predict
from modelcycle.export.export import export as export_model
from modelcycle.runs import Run
from modelcycle.tasks.plugin import SetupContext, TaskParts, TaskPlugin
from modelcycle.tasks.registry import register_task
from modelcycle.training.package import merge_lora
from modelcycle.training.service import distill, train, train_ppo
from modelcycle.tuning import tune_recipe as tune

if TYPE_CHECKING:
    from modelcycle.config import MonitorSection, ServeSection

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
    "bench",
    "prune_model",
    "quantize_int8",
    "merge_lora",
    "serve",
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


def serve(models: list[str], cfg: ServeSection, monitoring: MonitorSection | None = None) -> None:
    """Serve run folders or packages (``NAME=PATH`` names one) over HTTP until SIGTERM or Ctrl-C,
    each on the protocols its task offers; ``cfg`` is ``load_config(...).serve``. The server's
    modules (FastAPI, uvicorn) load here, not with every other verb."""
    from modelcycle.serve.server import serve as run

    run(models, cfg, monitoring)
