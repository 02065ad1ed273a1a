"""Hyperparameter search with Optuna (``modelcycle tune``): space.py reads and checks the space
file, study.py holds the Optuna side (storage, samplers, pruners), search.py runs the trials as
ordinary runs and the workers, report.py writes the study report.

Named ``tuning``, not ``tune``: importing a subpackage ``modelcycle.tune`` would set the attribute
``modelcycle.tune`` to the package and hide the function ``modelcycle.tune(...)``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelcycle.config import Config, load_config

if TYPE_CHECKING:
    from modelcycle.tuning.search import TuneResult


def tune_recipe(
    config: Config | str | Path | None,
    space: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    trials: int | None = None,
    sampler: str | None = None,
    pruner: str | None = None,
    storage: str | None = None,
    workers: int | None = None,
    study: str | None = None,
) -> TuneResult:
    """Search hyperparameters of the recipe ``config`` over the ``space`` file with Optuna; each
    trial is a run folder ``RUN_DIR/STUDY/trial-NNNN`` and ``RUN_DIR/STUDY/`` holds the report.
    Arguments left None come from the recipe's ``tune:`` section (docs/tune.md); running it again
    continues the study up to ``trials``. Returns a ``TuneResult`` (best value, params, run, report)."""
    given = {"space": space, "trials": trials, "sampler": sampler, "pruner": pruner, "storage": storage}
    given |= {"workers": workers, "study": study}
    flags = [*overrides, *(f"tune.{k}={v}" for k, v in given.items() if v is not None)]
    if isinstance(config, Config):
        config = load_config(None, flags, base=config.model_dump()) if flags else config
    else:
        config = load_config(config, flags)
    from modelcycle.tuning.search import tune  # optuna and sqlalchemy load only when tuning

    return tune(config)
