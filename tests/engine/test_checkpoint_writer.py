"""Checkpoints written in the background (engine/checkpoint.Writer through RunContext.save): what
is written is the state at the save, a crash mid-write leaves the previous checkpoint, and a
write that fails is an error at the next save or flush."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from modelcycle.engine import checkpoint
from modelcycle.engine.run_context import RunContext
from modelcycle.errors import CheckpointError


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((256, 256), value)}, "state": {"step": int(value)}}


def test_what_is_written_is_the_state_at_the_save_not_after(tmp_path: Path, monkeypatch):
    ctx = RunContext(tmp_path)
    release = threading.Event()
    real_finish = checkpoint.finish_save

    def held_back(pending):  # the fsync and rename wait until training has changed the tensors
        release.wait(10)
        real_finish(pending)

    monkeypatch.setattr(checkpoint, "finish_save", held_back)
    state = _state(1.0)
    ctx.save(state, step=1, what="step=1")
    assert not (tmp_path / "checkpoints" / "last.pt").exists()  # not in place before its fsync
    state["model"]["w"].add_(41)  # the next optimizer step, in place
    state["state"]["step"] = 2
    release.set()
    ctx.flush()
    saved = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert torch.equal(saved["model"]["w"], torch.full((256, 256), 1.0))
    assert saved["state"]["step"] == 1
    assert "checkpoint step=1" in (tmp_path / "events.log").read_text()


def test_a_failed_background_write_is_an_error_at_the_next_save_and_the_previous_one_stays(tmp_path: Path, monkeypatch):
    ctx = RunContext(tmp_path)
    ctx.save(_state(1.0), step=1, what="step=1")
    ctx.flush()
    fail = threading.Event()
    real_fsync = os.fsync

    def full_disk(fd):  # the file system finds no room when it writes the data out (delayed allocation)
        if fail.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    fail.set()
    ctx.save(_state(2.0), step=2, what="step=2")  # returns: the write fails on the other thread
    with pytest.raises(CheckpointError, match=r"disk is full.*; the previous last.pt is intact"):
        ctx.save(_state(3.0), step=3, what="step=3")
    fail.clear()
    ctx.flush()  # the error was raised once; the third checkpoint was never submitted
    saved = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert saved["state"]["step"] == 1
    assert not list((tmp_path / "checkpoints").glob("*.tmp-*"))


CRASH = """
import os, sys, time
from pathlib import Path
import torch
from modelcycle.engine import checkpoint
from modelcycle.engine.run_context import RunContext

run = Path(sys.argv[1])
ctx = RunContext(run)
ctx.save({"w": torch.full((512, 512), 1.0), "state": {"step": 1}}, step=1, what="step=1")
ctx.flush()
real_fsync = os.fsync

def stuck(fd):  # the second checkpoint is written to its temporary file; then the power goes
    (run / "writing").write_text("")
    time.sleep(60)

os.fsync = stuck
ctx.save({"w": torch.full((512, 512), 2.0), "state": {"step": 2}}, step=2, what="step=2")
time.sleep(60)
"""


def test_a_process_killed_mid_write_leaves_the_previous_checkpoint(tmp_path: Path):
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(CRASH))
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, str(script), str(run)])
    try:
        deadline = time.monotonic() + 120
        while not (run / "writing").exists():
            assert child.poll() is None, "the child ended before its second write"
            assert time.monotonic() < deadline, "the second write never started"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    folder = run / "checkpoints"
    assert list(folder.glob("last.pt.tmp-*")), "the killed write left no temporary file: it did not die mid-write"
    resumed = RunContext(run).load_last()  # removes the temporary, loads the previous checkpoint
    assert resumed["state"]["step"] == 1
    assert torch.equal(resumed["w"], torch.full((512, 512), 1.0))
    assert not list(folder.glob("*.tmp-*"))


def test_in_the_foreground_the_file_is_there_when_save_returns(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(RunContext, "background_checkpoints", False)
    ctx = RunContext(tmp_path)
    ctx.save(_state(5.0), step=5, what="step=5", best=True)
    assert checkpoint.load(tmp_path / "checkpoints" / "best.pt")["state"]["step"] == 5
    assert ctx.writer.written_s > 0


def test_torchs_own_error_on_top_of_a_full_disk_is_still_the_full_disk(tmp_path: Path, monkeypatch):
    """torch's zip writer, closing after the write that found the disk full, raises
    RuntimeError("unexpected pos ...") with the OSError as its context (seen on a full tmpfs)."""

    def zip_writer_on_a_full_disk(obj, handle, *args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0") from None

    monkeypatch.setattr(checkpoint.torch, "save", zip_writer_on_a_full_disk)
    with pytest.raises(CheckpointError, match="disk is full"):
        checkpoint.atomic_save({"w": torch.zeros(2)}, tmp_path / "last.pt")
    assert not list(tmp_path.glob("*.tmp-*"))

    def another_bug(obj, handle, *args, **kwargs):
        raise RuntimeError("not a disk problem")

    monkeypatch.setattr(checkpoint.torch, "save", another_bug)
    with pytest.raises(RuntimeError, match="not a disk problem"):
        checkpoint.atomic_save({"w": torch.zeros(2)}, tmp_path / "last.pt")
