"""Issue 14, item 2: one process writes a run folder. Two ``train`` (or ``--resume``, or
``--overwrite``) on one ``run.name`` used to both run to the end, the config of one beside the
weights of the other. Now the second is refused with the holder's pid, and a lock left by a
process killed with SIGKILL is taken over (with a note in events.log).

Process A is a real ``modelcycle train`` whose user model waits, in its first training step,
while a gate file exists: so A holds the run folder, deterministically, for as long as the test
needs, and the other commands run against a live run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import modelcycle
from helpers import assert_user_error, cli_command, cli_env, run_cli, tiny_overrides
from modelcycle.config import load_config
from modelcycle.runlock import LOCK_FILE, RunLock, RunLocked
from modelcycle.runs import read_manifest, verified_weights

GATED_MODEL = """
import time
from pathlib import Path

import torch
from torch import nn

GATE = Path({gate!r})


class Gated(nn.Module):
    def __init__(self, in_channels, num_classes, image_size):
        super().__init__()
        self.linear = nn.Linear(in_channels * image_size * image_size, num_classes)

    def forward(self, x):
        if self.training:
            while GATE.exists():  # the test holds this training step until it removes the gate
                time.sleep(0.05)
        return self.linear(x.flatten(1))


def build(in_channels, num_classes, image_size):
    torch.manual_seed(0)
    return Gated(in_channels, num_classes, image_size)
"""


@pytest.fixture
def gated(tmp_path: Path) -> tuple[str, Path]:
    """(model.name of the gated model, its gate file, present)."""
    gate = tmp_path / "gate"
    gate.touch()
    path = tmp_path / "gated_model.py"
    path.write_text(GATED_MODEL.format(gate=str(gate)))
    return f"{path}:build", gate


def args_config(args: list[str], *more: str):
    return load_config(None, [*args, *more])


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [*cli_command(), "train", *args], env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _wait_running(run: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``proc`` has the run folder (its pid in the lock and in status.json)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"train exited early ({proc.returncode}): {proc.stderr.read()}"
        try:
            status = json.loads((run / "status.json").read_text())
            holder = json.loads((run / LOCK_FILE).read_text())
        except (OSError, ValueError):
            status = holder = {}
        if status.get("state") == "running" and holder.get("pid") == proc.pid:
            return
        time.sleep(0.05)
    raise AssertionError("train did not start in time")


def test_a_second_train_resume_or_overwrite_of_a_live_run_is_refused(prepared: Path, tmp_path: Path, gated):
    model, gate = gated
    runs = tmp_path / "runs"
    run = runs / "shared"
    args = tiny_overrides(prepared, runs, name="shared", model__name=model, model__args="{}", train__epochs=1)
    a = _start(args)
    try:
        _wait_running(run, a)
        config = (run / "config.yaml").read_bytes()
        # a different recipe: had it run, config.yaml would show it
        b = run_cli("train", *args, "train.lr=0.5")
        assert_user_error(b, f"run folder {run} is in use", f"pid {a.pid}", "run.name")
        for flags in ({"resume": True}, {"overwrite": True}):  # the same from Python, in this process
            with pytest.raises(RunLocked, match=f"pid {a.pid}"):
                modelcycle.train(args_config(args, "train.lr=0.5"), progress=False, **flags)
            assert (run / "config.yaml").read_bytes() == config, f"train {flags} changed config.yaml"
            assert run.is_dir() and (run / "status.json").is_file(), f"train {flags} deleted the live run"
        gate.unlink()
        assert a.wait(timeout=120) == 0, a.stderr.read()
    finally:
        gate.unlink(missing_ok=True)
        if a.poll() is None:
            a.kill()
            a.wait()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == sorted(m["step"] for m in lines), "metrics of two writers interleaved"
    assert (
        "train.lr=0.5" not in (run / "config.yaml").read_text() and "lr: 0.5" not in (run / "config.yaml").read_text()
    )
    assert (run / LOCK_FILE).read_text() == "", "a finished run leaves its lock file empty"
    verified_weights(read_manifest(run))  # A's package is whole


def test_a_lock_left_by_sigkill_is_taken_over_with_a_note(prepared: Path, tmp_path: Path, gated):
    """SIGKILL while loader workers run: the workers outlive their parent for a while, and a lock
    they inherited (flock) would keep the run locked; the run lock dies with its process."""
    model, gate = gated
    runs = tmp_path / "runs"
    run = runs / "killed"
    args = tiny_overrides(
        prepared, runs, name="killed", model__name=model, model__args="{}", train__epochs=1, data__workers=1
    )
    a = _start(args)
    try:
        _wait_running(run, a)
        time.sleep(0.3)  # the loader worker is forked by now: the first step waits on the gate
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    gate.unlink()
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == a.pid  # it died holding the lock
    modelcycle.train(args_config(args), resume=True, progress=False)
    events = (run / "events.log").read_text()
    assert f"took over the run lock left by pid {a.pid}" in events, events
    assert "no longer running" in events


def test_a_stale_lock_record_is_noted_and_the_lock_is_taken(tiny_config, tmp_path: Path):
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    dead = {"pid": 2**22 + 12345, "host": os.uname().nodename, "since": "2020-01-01T00:00:00+00:00"}
    (run / LOCK_FILE).write_text(json.dumps(dead))
    modelcycle.train(tiny_config(train__epochs=1), progress=False)
    events = (run / "events.log").read_text()
    assert f"took over the run lock left by pid {dead['pid']}" in events, events
    assert (run / LOCK_FILE).read_text() == ""


def test_a_run_folder_locked_by_this_process_is_refused(tiny_config, tmp_path: Path):
    """A notebook that trains the same run.name while a first train of it is still going (a
    thread, a callback): the same process, so a POSIX lock alone would not see it."""
    run = tmp_path / "runs" / "tiny"
    with RunLock.acquire(run):
        with pytest.raises(RunLocked, match="in use by this same process"):
            modelcycle.train(tiny_config(train__epochs=1), progress=False)
        assert not (run / "config.yaml").exists()
    modelcycle.train(tiny_config(train__epochs=1), progress=False)  # released: it runs


@pytest.mark.slow
def test_torchrun_processes_on_a_locked_run_stop_with_the_error(prepared: Path, tmp_path: Path):
    """With --nproc, rank 0 takes the lock; refused, every process stops (no hang) with exit 2."""
    runs = tmp_path / "runs"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from modelcycle.runlock import RunLock; from pathlib import Path; import time; "
         f"RunLock.acquire(Path({str(runs / 'tiny')!r})); print('held', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True, env=cli_env(),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_cli("train", *tiny_overrides(prepared, runs, train__epochs=1), "--nproc", "2", timeout=240)
        assert_user_error(result, "is in use", f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
