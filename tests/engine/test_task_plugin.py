"""A task written outside modelcycle, as a user would: the stub regression task (stub_task.py,
not in src/) is registered, trains on the engine, survives SIGKILL and resumes to the same bits,
is packaged, evaluated, and listed by `modelcycle runs`. Nothing in src/ names it.

The training processes find it through MODELCYCLE_TASKS (its folder on PYTHONPATH, stub_runs.py);
this process registers it with modelcycle.register_task (the ``stub_plugin`` fixture).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import stub_runs
import torch

import modelcycle
from modelcycle.errors import ConfigError

pytestmark = pytest.mark.slow

MID_EPOCH = ("train.checkpoint_every=5", "train.log_every=5")


def test_a_task_from_outside_src_trains_resumes_packages_evaluates_and_lists(stub_rows: Path, stub_plugin, tmp_path):
    runs = tmp_path / "runs"
    straight = stub_runs.train(stub_rows, runs, "straight", *MID_EPOCH)
    assert straight.returncode == 0, straight.stderr
    assert "val_loss=" in straight.stderr + straight.stdout  # the plugin's summary metrics

    stub_runs.kill_and_resume(stub_rows, runs, "killed", *MID_EPOCH, kills=2, seed=7)
    stub_runs.assert_same_weights(runs / "straight", runs / "killed")  # as if never interrupted

    # the package records the task; the plugin's defaults were applied to what the command left unset
    manifest = json.loads((runs / "killed" / "model" / "modelcycle.json").read_text())
    assert manifest["task"] == "stub_regression" and manifest["monitor"] == "val_loss"
    saved = (runs / "killed" / "config.yaml").read_text()
    assert "task: stub_regression" in saved and "schedule: none" in saved

    # evaluated in this process, through the registered plugin
    metrics = modelcycle.evaluate(runs / "killed")
    assert metrics["task"] == "stub_regression" and metrics["num_samples"] == 64
    assert metrics["mse"] == pytest.approx(modelcycle.evaluate(runs / "straight")["mse"])
    y = torch.tensor(json.loads((stub_rows / "val.json").read_text())["y"])
    assert metrics["mse"] < float(y.var())  # it learned something: better than guessing the mean

    # listed: finished, with its monitored metric
    listed = subprocess.run(
        [sys.executable, "-m", "modelcycle", "runs", str(runs), "--json"],
        env=stub_runs.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    rows = {row["run"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {"straight", "killed"}
    assert all(row["status"] == "finished" and row["metric"] == "val_loss" for row in rows.values()), rows
    assert rows["killed"]["best"] == pytest.approx(rows["straight"]["best"])


def test_an_unknown_task_names_the_known_ones(stub_plugin, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'stub_regression'.*Known tasks: .*classify"):
        modelcycle.train(modelcycle.load_config(None, ["run.task=stub_regresion", f"run.dir={tmp_path}"]))
    with pytest.raises(modelcycle.UserError, match="already registered"):
        modelcycle.register_task(modelcycle.TaskPlugin(name="classify"))
