"""Exact resume: a CPU run killed with SIGKILL at any moment and resumed ends with the same bits
as the same run uninterrupted; Ctrl-C saves a checkpoint and --resume continues. The runs train
the stub task (stub_task.py: an MLP with dropout, so a resume must restore the RNG) in other
processes, as `modelcycle train` (stub_runs.py)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import stub_runs
import torch
from safetensors.torch import load_file

import modelcycle

pytestmark = pytest.mark.slow

# ``stub_rows``: 240 training rows, 30 steps an epoch (tests/engine/conftest.py). A cosine schedule,
# so that a resume must restore the scheduler's state too.
COSINE = ("train.schedule=cosine",)


@pytest.mark.parametrize(
    "extra",
    [(), ("train.checkpoint_every=7", "train.log_every=3", "train.weight_decay=0.01")],
    ids=["defaults", "mid-epoch"],
)
def test_sigkill_and_resume_is_bit_identical(stub_rows: Path, stub_plugin, tmp_path: Path, extra: tuple[str, ...]):
    runs = tmp_path / "runs"
    stub_runs.train_here(stub_rows, runs, "straight", *COSINE, *extra)
    stub_runs.kill_and_resume(stub_rows, runs, "killed", *COSINE, *extra, kills=3, seed=1234)
    stub_runs.assert_same_weights(runs / "straight", runs / "killed")


def test_ctrl_c_saves_and_resume_continues(stub_rows: Path, stub_plugin, tmp_path: Path):
    runs = tmp_path / "runs"
    extra = (*COSINE, "train.epochs=4", "train.log_every=5")
    stub_runs.train_here(stub_rows, runs, "straight", *extra)

    proc = subprocess.Popen(
        stub_runs.command(stub_rows, runs, "stopped", *extra),
        env=stub_runs.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = runs / "stopped" / "metrics.jsonl"  # its first line: the run is in its loop
    deadline = time.monotonic() + 300
    while not metrics.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    saved = torch.load(runs / "stopped" / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < saved["state"]["step"] < 4 * 30  # stopped mid-run, not at its end

    finish = stub_runs.train(stub_rows, runs, "stopped", *extra, resume=True)
    assert finish.returncode == 0, finish.stderr
    stub_runs.assert_same_weights(runs / "straight", runs / "stopped")


def test_a_crash_before_best_pt_is_linked_still_packages_the_best_epoch(stub_config):
    """The kill window between writing last.pt and linking best.pt: resume must relink best.pt,
    or the package is an older epoch than the one its metrics describe."""
    config = stub_config(name="crash", train__monitor="train_loss", train__keep_checkpoints=3)
    run = modelcycle.train(config, progress=False)
    state = torch.load(run.checkpoints / "last.pt", weights_only=True)["state"]
    assert state["best_epoch"] == 2, "the second epoch's train loss must be the lower for this test to mean anything"
    first_epoch = sorted(run.checkpoints.glob("step-*.pt"))[0]
    (run.checkpoints / "best.pt").unlink()  # a hard link to last.pt: unlink, never write through it
    shutil.copyfile(first_epoch, run.checkpoints / "best.pt")  # as if killed before the epoch-2 link
    shutil.rmtree(run.model_dir)
    modelcycle.train(config, resume=True, progress=False)
    packaged = load_file(run.model_dir / "model.safetensors")
    last = torch.load(run.checkpoints / "last.pt", weights_only=True)["model"]
    assert packaged.keys() == last.keys() and all(torch.equal(packaged[k], last[k]) for k in last)
