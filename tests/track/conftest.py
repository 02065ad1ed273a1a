"""A folder of real small runs that differ in settings and in how they ended, shared by the
listing and comparison tests (training them once keeps the suite quick on two cores)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import modelcycle
from helpers import InterruptAt, tiny_overrides
from modelcycle.engine.callbacks import Callback
from modelcycle.engine.trainer import TrainingInterrupted


class CrashAtEpoch(Callback):
    """A bug that surfaces mid-training: the run must read as failed, with the error."""

    def on_epoch_start(self, trainer) -> None:
        if trainer.state.epoch == 1:
            raise RuntimeError("disk on fire")


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory, shapes_data: Path) -> Path:
    """On ``shapes_data`` (tests/conftest.py): runs/fast (lr 0.01), runs/slow (lr 1e-5),
    runs/study/trial-0001 (narrower, nested), runs/stopped (Ctrl-C after step 2), runs/crashed (an
    exception in epoch 2), runs/live (a status.json naming this very process), runs/killed (naming
    a process that is gone), runs/broken (unparseable config.yaml), runs/torn (a damaged metrics
    line), runs/notes (no run)."""
    root = tmp_path_factory.mktemp("track-runs") / "runs"

    def train(name: str, *more: str, run_dir: Path = root, callbacks=None):
        config = modelcycle.load_config(None, [*tiny_overrides(shapes_data, run_dir, name=name), *more])
        return modelcycle.train(config, progress=False, callbacks=callbacks)

    train("fast")
    train("slow", "train.lr=0.00001")
    train("trial-0001", "model.args={width: 4, dropout: 0.0}", run_dir=root / "study")
    with pytest.raises(TrainingInterrupted):
        train("stopped", callbacks=[InterruptAt(2)])
    with pytest.raises(RuntimeError, match="disk on fire"):
        train("crashed", callbacks=[CrashAtEpoch()])

    for name in ("live", "killed", "torn"):
        shutil.copytree(root / "fast", root / name, ignore=shutil.ignore_patterns("model", "checkpoints"))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for name, pid in (("live", os.getpid()), ("killed", int(gone.stdout))):
        status = {"state": "running", "pid": pid, "host": socket.gethostname(), "since": "2026-01-01T00:00:00"}
        (root / name / "status.json").write_text(json.dumps(status))
    lines = (root / "torn" / "metrics.jsonl").read_text().splitlines()
    (root / "torn" / "metrics.jsonl").write_text("\n".join([lines[0], '{"step": 3, "trai', *lines[1:]]) + "\n")
    (root / "broken").mkdir()
    (root / "broken" / "config.yaml").write_text("train: [unclosed\n")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("try a bigger model\n")
    return root
