"""The public Python API; every CLI verb is a thin call into one of these. It only re-exports:
the work lives in the services below it (training/, evaluation/, tuning/, export/, compress/),
which never import this module.

Each name is imported on first use (PEP 562), so a verb pays only for its own service: `modelcycle
train` does not load the report, pruning and benchmark code (matplotlib, scikit-learn, scipy),
which cost every command a few seconds when they loaded together.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelcycle.config import MonitorSection, ServeSection
    from modelcycle.data.prepare import PrepareResult

# public name -> (module, name there)
_FROM = {
    "train": ("modelcycle.training.service", "train"),
    "train_ppo": ("modelcycle.training.service", "train_ppo"),
    "distill": ("modelcycle.training.service", "distill"),
    "evaluate": ("modelcycle.evaluation.service", "evaluate"),
    "predict": ("modelcycle.evaluation.service", "predict"),
    "iter_predict": ("modelcycle.evaluation.service", "iter_predict"),
    "compare": ("modelcycle.evaluation.service", "compare"),
    "crossval": ("modelcycle.evaluation.crossval", "crossval"),
    "export_model": ("modelcycle.export.export", "export"),
    "bench": ("modelcycle.evaluation.bench", "bench"),
    "prune_model": ("modelcycle.compress.prune", "prune_model"),
    "quantize_int8": ("modelcycle.compress.quantize", "quantize_int8"),
    "merge_lora": ("modelcycle.training.package", "merge_lora"),
    "write_digits": ("modelcycle.data.demo", "write_digits"),
    "load_config": ("modelcycle.config", "load_config"),
    "tune": ("modelcycle.tuning", "tune_recipe"),
    "Run": ("modelcycle.runs", "Run"),
    "register_task": ("modelcycle.tasks.registry", "register_task"),
    "TaskPlugin": ("modelcycle.tasks.plugin", "TaskPlugin"),
    "TaskParts": ("modelcycle.tasks.plugin", "TaskParts"),
    "SetupContext": ("modelcycle.tasks.plugin", "SetupContext"),
}

__all__ = ["prepare", "serve_models", *_FROM]


def __getattr__(name: str) -> Any:
    if name not in _FROM:
        raise AttributeError(f"module 'modelcycle.api' has no attribute {name!r}")
    module, attribute = _FROM[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # the next lookup is a plain global
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


def prepare(
    src: str | Path,
    out: str | Path,
    val: float = 0.2,
    test: float = 0.0,
    seed: int = 0,
    dedupe: bool = False,
    near_duplicates: bool = False,
) -> PrepareResult:
    """Scan a folder of class folders (or a manifest), verify images, write a stratified split;
    identical files stay in one split (``dedupe``: one of each is kept)."""
    from modelcycle.data.prepare import prepare as run

    return run(src, out, val=val, test=test, seed=seed, dedupe=dedupe, near_duplicates=near_duplicates)


def serve_models(models: list[str], cfg: ServeSection, monitoring: MonitorSection | None = None) -> None:
    """Serve run folders or packages (``NAME=PATH`` names one) over HTTP until SIGTERM or Ctrl-C,
    each on the protocols its task offers; ``cfg`` is ``load_config(...).serve``."""
    from modelcycle.serve.server import serve as run

    run(models, cfg, monitoring)
