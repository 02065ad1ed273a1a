"""The stub task (stub_task.py) trained in other processes, as a user's `modelcycle train` would:
the command, its environment (this folder on PYTHONPATH, MODELCYCLE_TASKS=stub_task), and a
SIGKILL once the run has written a new checkpoint."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent

# 240 rows in batches of 8 (30 steps an epoch), each step sleeping 10 ms: long enough that a kill
# lands mid-run, in a step, a save or a validation.
SLOW = "model.args={width: 16, step_sleep: 0.01}"


def env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "MODELCYCLE_TASKS": "stub_task", "PYTHONUNBUFFERED": "1"}


def overrides(data: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return [
        "run.task=stub_regression",
        f"data.root={data}",
        f"run.dir={runs}",
        f"run.name={name}",
        SLOW,
        "train.epochs=3",
        "train.batch_size=8",
        "train.lr=0.01",
        *extra,
    ]


def command(data: Path, runs: Path, name: str, *extra: str, resume: bool = False) -> list[str]:
    return [sys.executable, "-m", "modelcycle", "train", *overrides(data, runs, name, *extra)] + (
        ["--resume"] if resume else []
    )


def train(data: Path, runs: Path, name: str, *extra: str, resume: bool = False) -> subprocess.CompletedProcess:
    cmd = command(data, runs, name, *extra, resume=resume)
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)


def train_here(data: Path, runs: Path, name: str, *extra: str):
    """The same run in this process (the stub task registered here, the ``stub_plugin`` fixture):
    an uninterrupted reference without the seconds a process takes to start."""
    import modelcycle

    return modelcycle.train(modelcycle.load_config(None, overrides(data, runs, name, *extra)), progress=False)


def _checkpoint_id(run: Path) -> tuple[int, int] | None:
    try:
        st = (run / "checkpoints" / "last.pt").stat()
        return st.st_ino, st.st_mtime_ns
    except FileNotFoundError:
        return None


def kill_after_checkpoint(cmd: list[str], run: Path, rng: random.Random, window: float = 0.3) -> bool:
    """Start ``cmd`` and SIGKILL it up to ``window`` seconds after it wrote a new checkpoint (so
    every attempt makes progress however slow the machine); False if it finished first."""
    before = _checkpoint_id(run)
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if _checkpoint_id(run) not in (None, before):
            time.sleep(rng.uniform(0.0, window))
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        _, err = proc.communicate()
        assert proc.returncode == 0, err
        return False
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return True


def kill_and_resume(data: Path, runs: Path, name: str, *extra: str, kills: int, seed: int) -> int:
    """Kill run ``name`` up to ``kills`` times, resuming after each, then let it finish; returns
    how many kills landed (at least one, or the run proved nothing)."""
    rng = random.Random(seed)
    landed = 0
    while landed < kills and kill_after_checkpoint(
        command(data, runs, name, *extra, resume=landed > 0), runs / name, rng
    ):
        landed += 1
    assert landed >= 1, "the run finished before it could be killed; the test proved nothing"
    if not (runs / name / "model" / "modelcycle.json").exists():
        finish = train(data, runs, name, *extra, resume=True)
        assert finish.returncode == 0, finish.stderr
    assert "resumed from step=" in (runs / name / "events.log").read_text()
    return landed


def assert_same_weights(a: Path, b: Path) -> None:
    """Runs ``a`` and ``b`` end with the same bits: their last checkpoints and their packages."""
    for weights in (
        lambda run: torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"],
        lambda run: load_file(run / "model" / "model.safetensors"),
    ):
        first, second = weights(a), weights(b)
        assert first.keys() == second.keys()
        different = [k for k in first if not torch.equal(first[k], second[k])]
        assert not different, f"tensors differ between {a.name} and {b.name}: {different[:5]}"
