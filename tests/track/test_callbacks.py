"""Which tracking callbacks a run gets: the status file always, MLflow only when asked, and
nothing on the other ranks of a distributed run (rank 0 alone writes the run folder)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import modelcycle
from modelcycle import track
from modelcycle.config import load_config
from modelcycle.errors import UserError
from modelcycle.track.status import StatusFile
from modelcycle.track.tensorboard import TensorBoardTracker


def test_every_run_writes_its_status_tensorboard_when_installed_and_mlflow_is_opt_in(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    # tensorboard is installed with [dev]: left unset, track.tensorboard uses it
    assert [type(c) for c in track.callbacks(load_config(), resume=False)] == [StatusFile, TensorBoardTracker]
    off = load_config(None, ["track.tensorboard=false"])
    assert [type(c) for c in track.callbacks(off, resume=False)] == [StatusFile]


def test_other_ranks_of_a_distributed_run_track_nothing(monkeypatch):
    monkeypatch.setenv("RANK", "1")  # as torchrun sets it; MLflow is not even imported
    config = load_config(None, ["track.mlflow_uri=sqlite:///never-created.db", "track.tensorboard=true"])
    assert track.callbacks(config, resume=False) == []


def test_without_the_extra_the_error_says_how_to_install_it(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` does when it is not installed
    config = load_config(None, [f"run.dir={tmp_path / 'runs'}", f"track.mlflow_uri=sqlite:///{tmp_path}/m.db"])
    with pytest.raises(UserError, match=r"pip install 'modelcycle\[mlflow\]'"):
        modelcycle.train(config, progress=False)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m.db").exists()
