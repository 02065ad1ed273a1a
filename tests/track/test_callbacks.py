"""Which tracking callbacks a run gets: the status file always, MLflow only when asked, and
nothing on the other ranks of a distributed run (rank 0 alone writes the run folder)."""

from __future__ import annotations

from modelcycle import track
from modelcycle.config import load_config
from modelcycle.track.status import StatusFile


def test_every_run_writes_its_status_and_mlflow_is_opt_in(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert [type(c) for c in track.callbacks(load_config(), resume=False)] == [StatusFile]


def test_other_ranks_of_a_distributed_run_track_nothing(monkeypatch):
    monkeypatch.setenv("RANK", "1")  # as torchrun sets it; MLflow is not even imported
    config = load_config(None, ["track.mlflow_uri=sqlite:///never-created.db"])
    assert track.callbacks(config, resume=False) == []
