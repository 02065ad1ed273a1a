"""Tracking: what a run's folder says about it (status, listing, comparison), TensorBoard event
files when the package is installed and, optionally, a copy of the run in MLflow. Imports
nothing heavy: ``api.train`` calls :func:`callbacks` on every run."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from modelcycle.engine.callbacks import Callback, Tracker
from modelcycle.track import tensorboard
from modelcycle.track.status import StatusFile

if TYPE_CHECKING:
    from modelcycle.config import Config
    from modelcycle.runs import Run

__all__ = ["Tracker", "callbacks", "finish"]


def callbacks(config: Config, resume: bool) -> list[Callback]:
    """The callbacks a run's config asks for. Called before any data is read, so a tracking
    set-up that cannot work (extra missing, store unreachable) fails before training, not after."""
    if not _is_main_process():
        return []  # in a distributed run only rank 0 writes the run folder and reports
    out: list[Callback] = [StatusFile()]
    if tensorboard.wanted(config):
        out.append(tensorboard.TensorBoardTracker(config))
    if config.track.mlflow_uri:
        from modelcycle.track.mlflow import MlflowTracker

        out.append(MlflowTracker(config, resume=resume))
    return out


def finish(tracking: list[Callback], run: Run) -> None:
    for callback in tracking:
        if isinstance(callback, Tracker):
            callback.finish(run)


def _is_main_process() -> bool:
    """torchrun sets RANK before any process group exists; once one does, it decides."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"
