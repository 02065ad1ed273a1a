"""Exact resume: a CPU run killed with SIGKILL at any moment and resumed ends with the same bits
as the same run uninterrupted; Ctrl-C saves a checkpoint and --resume continues."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import modelcycle
from helpers import tiny_overrides

pytestmark = pytest.mark.slow


# ``digits_data``: the bundled digits, prepared once a session (tests/conftest.py)


def _args(data: Path, runs: Path, name: str, extra: list[str]) -> list[str]:
    # default settings (loader workers included) on a small, fast recipe
    return [
        sys.executable,
        "-m",
        "modelcycle",
        "train",
        f"data.root={data}",
        f"run.dir={runs}",
        f"run.name={name}",
        "data.image_size=16",
        "model.args={width: 8}",
        "train.epochs=3",
        "train.batch_size=32",
        "train.lr=0.01",
        *extra,
    ]


def _env() -> dict:
    return {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}


def _train(data: Path, runs: Path, name: str, extra: list[str], resume: bool = False) -> subprocess.CompletedProcess:
    cmd = _args(data, runs, name, extra) + (["--resume"] if resume else [])
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)


def _checkpoint_id(run: Path) -> tuple[int, int] | None:
    try:
        st = (run / "checkpoints" / "last.pt").stat()
        return st.st_ino, st.st_mtime_ns
    except FileNotFoundError:
        return None


def _kill_at_random(data: Path, runs: Path, name: str, extra: list[str], resume: bool, rng: random.Random) -> bool:
    """Start training and SIGKILL it at a random moment after it wrote a new checkpoint (so every
    attempt makes progress however slow the machine); False if it finished first."""
    cmd = _args(data, runs, name, extra) + (["--resume"] if resume else [])
    before = _checkpoint_id(runs / name)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if _checkpoint_id(runs / name) not in (None, before):
            time.sleep(rng.uniform(0.0, 1.0))  # anywhere in the next stretch: a step, a save, a validation
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        assert proc.returncode == 0, proc.stderr.read()
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def _last_checkpoint_model(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ after resume: {different[:5]}"


@pytest.mark.parametrize(
    "extra",
    [[], ["train.checkpoint_every=7", "train.log_every=3", "train.weight_decay=0.01"]],
    ids=["defaults", "mid-epoch"],
)
def test_sigkill_and_resume_is_bit_identical(digits_data, tmp_path, extra):
    runs = tmp_path / "runs"
    reference = _train(digits_data, runs, "straight", extra)
    assert reference.returncode == 0, reference.stderr

    rng = random.Random(1234)
    kills = 0
    resume = False
    while kills < 3 and _kill_at_random(digits_data, runs, "killed", extra, resume, rng):
        kills += 1
        resume = True
    assert kills >= 1, "the run finished before it could be killed; the test proved nothing"
    if not (runs / "killed" / "model" / "modelcycle.json").exists():
        finish = _train(digits_data, runs, "killed", extra, resume=True)
        assert finish.returncode == 0, finish.stderr

    _assert_identical(_last_checkpoint_model(runs / "straight"), _last_checkpoint_model(runs / "killed"))
    _assert_identical(_weights(runs / "straight"), _weights(runs / "killed"))
    events = (runs / "killed" / "events.log").read_text()
    assert "resumed from step=" in events


def test_ctrl_c_saves_and_resume_continues(digits_data, tmp_path):
    runs = tmp_path / "runs"
    extra = ["train.epochs=4"]
    reference = _train(digits_data, runs, "straight", extra)
    assert reference.returncode == 0, reference.stderr

    proc = subprocess.Popen(
        _args(digits_data, runs, "stopped", extra),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = runs / "stopped" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not metrics.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    saved = torch.load(runs / "stopped" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["state"]["step"] > 0

    finish = _train(digits_data, runs, "stopped", extra, resume=True)
    assert finish.returncode == 0, finish.stderr
    _assert_identical(_weights(runs / "straight"), _weights(runs / "stopped"))


def test_a_crash_before_best_pt_is_linked_still_packages_the_best_epoch(prepared, tmp_path):
    """The kill window between writing last.pt and linking best.pt: resume must relink best.pt,
    or the package is an older epoch than the one its metrics describe."""
    overrides = tiny_overrides(prepared, tmp_path, name="crash", train__monitor="train_loss", train__keep_checkpoints=3)
    run = modelcycle.train(modelcycle.load_config(None, overrides), progress=False)
    state = torch.load(run.checkpoints / "last.pt", weights_only=True)["state"]
    assert state["best_epoch"] == 2, "the second epoch's train loss must be the lower for this test to mean anything"
    first_epoch = sorted(run.checkpoints.glob("step-*.pt"))[0]
    (run.checkpoints / "best.pt").unlink()  # a hard link to last.pt: unlink, never write through it
    shutil.copyfile(first_epoch, run.checkpoints / "best.pt")  # as if killed before the epoch-2 link
    shutil.rmtree(run.model_dir)
    modelcycle.train(modelcycle.load_config(None, overrides), resume=True, progress=False)
    _assert_identical(_weights(run.path), _last_checkpoint_model(run.path))
