"""Issue 14, item 8: litter. ``best.pt.tmp-PID`` hard links stayed after every resume (POSIX
rename between two links of one file succeeds and does nothing, so the temporary name stayed,
holding an old checkpoint on disk); a ``model.tmp-PID`` left by a kill was never removed; and the
package files were not on disk (fsync) before the swap that publishes them."""

from __future__ import annotations

import os
from pathlib import Path

import torch

import modelcycle
from modelcycle import runs
from modelcycle.engine import checkpoint

DEAD_PID = 2**22 + 4321  # above Linux's largest pid: no process has it


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if ".tmp-" in p.name)


def test_linking_best_to_the_same_file_leaves_no_temporary(tmp_path: Path):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    checkpoint.atomic_save({"step": 1}, last)
    checkpoint.atomic_link(last, best)
    checkpoint.atomic_link(last, best)  # best.pt is last.pt already: what a resume does
    assert _temporaries(tmp_path) == []
    assert os.path.samefile(last, best)


def test_resumes_leave_no_temporary_checkpoints(tiny_config):
    # one epoch: it is the best so far, so last.pt and best.pt are one file when the resume links them
    run = modelcycle.train(tiny_config(train__epochs=1), progress=False)
    modelcycle.train(tiny_config(train__epochs=1), resume=True, progress=False)  # nothing left to train
    assert _temporaries(run.path) == []
    modelcycle.train(tiny_config(train__epochs=2), resume=True, progress=False)
    assert _temporaries(run.path) == []


def test_litter_of_killed_processes_is_removed_when_the_run_starts_again(tiny_config):
    run = modelcycle.train(tiny_config(train__epochs=1), progress=False)
    half_package = run.path / f"model.tmp-{DEAD_PID}"
    half_package.mkdir()
    (half_package / "model.safetensors").write_bytes(b"\0" * 4096)
    litter = [
        run.checkpoints / f"last.pt.tmp-{DEAD_PID}",
        run.checkpoints / f"best.pt.tmp-{DEAD_PID}",
        run.path / f"status.json.tmp-{DEAD_PID}",
        run.model_dir / f"modelcycle.json.tmp-{DEAD_PID}",
    ]
    for path in litter:
        path.write_bytes(b"half")
    keep = run.path / "notes.tmp-draft.txt"  # a user's file that only looks alike
    keep.write_text("mine")
    modelcycle.train(tiny_config(train__epochs=2), resume=True, progress=False)
    assert not half_package.exists()
    assert _temporaries(run.path) == ["notes.tmp-draft.txt"]
    events = (run.path / "events.log").read_text()
    assert f"removed what an interrupted process left behind: model.tmp-{DEAD_PID}" in events, events
    assert f"checkpoints/last.pt.tmp-{DEAD_PID}" in events


def test_a_package_moved_aside_by_a_killed_swap_is_put_back(tiny_config):
    """Killed between the two renames of the swap: model/ is missing, model.old-PID holds it."""
    run = modelcycle.train(tiny_config(train__epochs=1), progress=False)
    sha = runs.read_manifest(run)["weights"]["sha256"]
    os.replace(run.model_dir, run.path / f"model.old-{DEAD_PID}")
    lock = runs.make_run_dir(run.path, run.config, overwrite=False, resume=True)
    lock.release()
    assert runs.read_manifest(run)["weights"]["sha256"] == sha
    assert not (run.path / f"model.old-{DEAD_PID}").exists()
    assert f"model.old-{DEAD_PID} (moved back to model/)" in (run.path / "events.log").read_text()


def test_package_files_are_on_disk_before_the_swap(tmp_path: Path, monkeypatch):
    synced: list[str] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    swaps: list[tuple[str, list[str]]] = []

    def recording_replace(src, dst) -> None:
        swaps.append((str(dst), list(synced)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    out = tmp_path / "model"

    def extra(folder: Path) -> None:
        (folder / "tokenizer.json").write_text("{}")

    runs.write_package(out, {"w": torch.ones(3)}, {"task": "classify"}, extra=extra)
    synced_before_swap = next(before for dst, before in swaps if dst == str(out))
    tmp = str(tmp_path / f"model.tmp-{os.getpid()}")
    for name in ("model.safetensors", "modelcycle.json", "tokenizer.json"):
        assert f"{tmp}/{name}" in synced_before_swap, f"{name} was not fsynced before the swap"
    assert tmp in synced_before_swap, "the new package folder was not fsynced before the swap"
    assert synced[-1] == str(tmp_path), "the swap itself (the parent folder) was not fsynced"
