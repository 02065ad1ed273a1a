"""Crash-safe checkpoints: a failed write (full disk, read-only folder) leaves the previous file
intact and says so; loading never runs code; stale temporaries are cleaned up."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from modelcycle import api
from modelcycle.engine import checkpoint
from modelcycle.errors import CheckpointError, UserError


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((4, 4), value)}, "state": {"step": int(value)}}


def _failing_save(code: int, message: str):
    def fake(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the disk first
        raise OSError(code, message)

    return fake


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt" / "last.pt"
    checkpoint.atomic_save(_state(1.0), path)
    return path


def test_atomic_save_round_trip(saved: Path):
    loaded = torch.load(saved, weights_only=True)
    assert torch.equal(loaded["model"]["w"], torch.full((4, 4), 1.0))
    assert checkpoint.load(saved)["state"] == {"step": 1}
    assert sorted(p.name for p in saved.parent.iterdir()) == ["last.pt"]


def test_disk_full_keeps_the_previous_checkpoint(saved: Path, monkeypatch):
    before = saved.read_bytes()
    fake = _failing_save(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint.torch, "save", fake)
    with pytest.raises(CheckpointError) as info:
        checkpoint.atomic_save(_state(2.0), saved)
    message = str(info.value)
    assert "disk is full" in message and str(saved) in message
    assert "previous last.pt is intact" in message and "--resume" in message
    assert isinstance(info.value, UserError)
    monkeypatch.undo()
    assert saved.read_bytes() == before
    assert torch.equal(checkpoint.load(saved)["model"]["w"], torch.full((4, 4), 1.0))
    assert sorted(p.name for p in saved.parent.iterdir()) == ["last.pt"]  # no temporary left


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_read_only_folder_keeps_the_previous_checkpoint(saved: Path, monkeypatch, code: int):
    before = saved.read_bytes()
    fake = _failing_save(code, os.strerror(code))
    monkeypatch.setattr(checkpoint.torch, "save", fake)
    with pytest.raises(CheckpointError) as info:
        checkpoint.atomic_save(_state(2.0), saved)
    message = str(info.value)
    assert "not writable" in message and "intact" in message and "make the folder writable" in message.lower()
    monkeypatch.undo()
    assert saved.read_bytes() == before
    assert checkpoint.load(saved)["state"] == {"step": 1}
    assert sorted(p.name for p in saved.parent.iterdir()) == ["last.pt"]


def test_first_checkpoint_failing_says_there_was_none(tmp_path: Path, monkeypatch):
    fake = _failing_save(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint.torch, "save", fake)
    path = tmp_path / "last.pt"
    with pytest.raises(CheckpointError, match="no earlier checkpoint"):
        checkpoint.atomic_save(_state(1.0), path)
    assert not path.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_really_read_only_folder(saved: Path):
    folder = saved.parent
    folder.chmod(0o555)
    try:
        with pytest.raises(CheckpointError, match="not writable"):
            checkpoint.atomic_save(_state(2.0), saved)
    finally:
        folder.chmod(0o755)
    assert checkpoint.load(saved)["state"] == {"step": 1}


def test_atomic_link_makes_an_identical_file(saved: Path):
    best = saved.with_name("best.pt")
    checkpoint.atomic_link(saved, best)
    assert best.read_bytes() == saved.read_bytes()
    checkpoint.atomic_save(_state(3.0), saved)  # replacing last.pt must not change best.pt
    assert checkpoint.load(best)["state"] == {"step": 1}
    assert checkpoint.load(saved)["state"] == {"step": 3}


def test_stale_temporaries_are_removed(saved: Path):
    folder = saved.parent
    (folder / "last.pt.tmp-12345").write_bytes(b"torn")
    (folder / "best.pt.tmp-999").write_bytes(b"torn")
    checkpoint.remove_stale_temporaries(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]
    checkpoint.remove_stale_temporaries(folder / "missing")  # no folder: nothing to do


def test_prune_keeps_the_newest_numbered(tmp_path: Path):
    for step in (1, 2, 10, 11, 100):
        (tmp_path / f"step-{step:09d}.pt").write_bytes(b"x")
    (tmp_path / "last.pt").write_bytes(b"x")
    checkpoint.prune_numbered(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "step-000000011.pt", "step-000000100.pt"]


def test_damaged_or_missing_checkpoint_is_a_clear_error(tmp_path: Path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(CheckpointError, match="damaged"):
        checkpoint.load(bad)
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "nope.pt")


def test_a_checkpoint_holding_code_is_refused(tmp_path: Path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "hook": os.getcwd}, path)  # a function: loads only with weights_only=False
    with pytest.raises(CheckpointError):
        checkpoint.load(path)


def test_rng_state_round_trips_and_loads_weights_only(tmp_path: Path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    checkpoint.atomic_save({"rng": checkpoint.rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "rng.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


class FakeGPUs:
    """torch.cuda's random-stream calls on a machine with ``count`` GPUs, this process on ``current``."""

    def __init__(self, monkeypatch, count: int, current: int):
        self.count, self.current = count, current
        self.set: dict[int, torch.Tensor] = {}  # GPU index: the stream set on it
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(
            torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([self.current])
        )  # names its GPU
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_rng_state)

    def set_rng_state(self, state: torch.Tensor, device="cuda") -> None:
        index = self.current if device == "cuda" else torch.device(device).index
        if index >= self.count:  # what torch raises for a GPU that is not there
            raise IndexError("tuple index out of range")
        self.set[index] = state


def test_cuda_stream_is_the_current_gpus_and_resumes_where_fewer_are_visible(monkeypatch):
    """A checkpoint written on GPU 1 of a 2-GPU machine resumes on a 1-GPU machine (GPU 0), and
    one of 0.1.0's (every visible GPU's stream) puts back the current GPU's and no other."""
    writer = FakeGPUs(monkeypatch, count=2, current=1)
    saved = checkpoint.rng_state()
    assert torch.equal(saved["cuda"], torch.tensor([1]))
    writer.count, writer.current = 1, 0
    checkpoint.set_rng_state(saved)
    assert list(writer.set) == [0] and torch.equal(writer.set[0], torch.tensor([1]))
    writer.set.clear()
    checkpoint.set_rng_state({**saved, "cuda": [torch.tensor([10]), torch.tensor([11])]})
    assert list(writer.set) == [0] and torch.equal(writer.set[0], torch.tensor([10]))


def test_disk_full_during_training_keeps_the_last_good_checkpoint(stub_config, monkeypatch):
    calls = {"n": 0}
    real_save = torch.save

    def fills_the_disk(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 2:  # the first epoch's checkpoint fits, the second does not
            handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", fills_the_disk)
    config = stub_config(train__epochs=3)
    with pytest.raises(CheckpointError) as info:
        api.train(config, progress=False)
    monkeypatch.undo()
    assert "disk is full" in str(info.value)
    folder = Path(config.run.dir) / config.run.name / "checkpoints"
    last = torch.load(folder / "last.pt", weights_only=True)
    assert last["state"]["epoch"] == 1 and last["state"]["step"] == 4
    assert not list(folder.glob("*.tmp-*"))
