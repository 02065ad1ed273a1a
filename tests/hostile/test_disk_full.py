"""Issue 14, item 3: a full disk mid-run. The first failed write used to be the metrics.jsonl
append, which nothing handled: a traceback, then a process that never exited (waiting on its
loader workers) with status.json still "running". Now every write of the run path says what
could not be written where, exits 2, stops the workers, marks the run failed where the disk
lets it, and leaves the last checkpoint (and package) intact for ``--resume``.

The disk is real: a tmpfs of a few MB mounted for the test (root can, as in CI). Where mounting
is not allowed, the file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) makes the same writes
fail with EFBIG instead; the tests skip only if neither works.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import modelcycle
from helpers import assert_user_error, cli_env, tiny_overrides
from modelcycle import runs
from modelcycle.engine import checkpoint
from modelcycle.engine.callbacks import Callback
from modelcycle.errors import UserError
from modelcycle.runfiles import WriteFailed
from modelcycle.runs import read_manifest, verified_weights

FILL = """
import os, resource, signal
from pathlib import Path


def fill(folder, mode):
    if mode == "tmpfs":  # every byte of the small disk
        with open(Path(folder) / "filler", "ab", buffering=0) as handle:
            for chunk in (1 << 16, 1 << 12, 1):
                try:
                    while True:
                        handle.write(b"\\0" * chunk)
                except OSError:
                    pass
    else:  # no file of this process may grow any more
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
"""
namespace: dict = {}
exec(FILL, namespace)  # noqa: S102 - the same function here and in the child process


class Disk:
    """A few MB that can be filled up and freed again."""

    def __init__(self, root: Path, mode: str):
        self.root, self.mode = root, mode
        self._limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        self._handler = signal.getsignal(signal.SIGXFSZ)

    def fill(self) -> None:
        namespace["fill"](self.root, self.mode)

    def free(self) -> None:
        if self.mode == "tmpfs":
            (self.root / "filler").unlink(missing_ok=True)
        else:
            resource.setrlimit(resource.RLIMIT_FSIZE, self._limit)
            signal.signal(signal.SIGXFSZ, self._handler)

    def why(self) -> str:
        return "the disk is full" if self.mode == "tmpfs" else "largest file size"


@pytest.fixture
def disk(tmp_path: Path):
    root = tmp_path / "disk"
    root.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=8m", f"modelcycle-test-{uuid.uuid4().hex[:8]}", str(root)]
    if os.environ.get("MODELCYCLE_TEST_NO_MOUNT"):  # to exercise the fallback where mounting works
        mount = ["false"]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode == 0:
        disk = Disk(root, "tmpfs")
    else:
        try:  # RLIMIT_FSIZE works for any user; only a hard limit of 0 (or no resource module) stops it
            resource.getrlimit(resource.RLIMIT_FSIZE)
        except (AttributeError, OSError) as exc:
            pytest.skip(f"cannot mount a small tmpfs ({mounted.stderr.strip()}) nor limit file sizes ({exc})")
        disk = Disk(root, "rlimit")
    try:
        yield disk
    finally:
        disk.free()
        if disk.mode == "tmpfs":
            subprocess.run(["umount", "-l", str(root)], check=False)


class FillAt(Callback):
    """Fill the disk at the end of epoch ``epoch`` (after its checkpoint)."""

    def __init__(self, disk: Disk, epoch: int):
        self.disk, self.epoch = disk, epoch

    def on_epoch_end(self, trainer, metrics) -> None:
        if trainer.state.epoch == self.epoch:
            trainer.ctx.flush()  # checkpoints are written in the background: this one is on disk first
            self.disk.fill()


CHILD = (
    FILL
    + """
import sys
from modelcycle import track
from modelcycle.engine.callbacks import Callback


DISK, MODE = sys.argv[1], sys.argv[2]


class FillAfterFirstStep(Callback):
    def on_step_end(self, trainer):
        if trainer.state.step == 1:
            fill(DISK, MODE)


plain = track.callbacks
track.callbacks = lambda config, resume: [*plain(config, resume), FillAfterFirstStep()]
from modelcycle.cli import main

sys.argv = ["modelcycle", *sys.argv[3:]]
main()
"""
)


def test_a_full_disk_mid_run_is_an_error_and_the_process_exits(disk: Disk, prepared: Path, tmp_path: Path):
    """The audit's case: `modelcycle train` with loader workers, the disk full after step 1, so
    the first write that fails is the metrics.jsonl append at step 2."""
    args = tiny_overrides(prepared, disk.root / "runs", name="full", data__workers=1, train__epochs=2)
    script = tmp_path / "fill_and_train.py"
    script.write_text(textwrap.dedent(CHILD))
    try:
        result = subprocess.run(
            [sys.executable, str(script), str(disk.root), disk.mode, "train", *args],
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=180,  # it used to hang here for ever
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the failed run did not exit (its loader workers kept it alive)")
    run = disk.root / "runs" / "full"
    assert_user_error(result, f"could not write metrics {run / 'metrics.jsonl'}", disk.why(), "--resume")
    disk.free()
    status = json.loads((run / "status.json").read_text())
    if disk.mode == "tmpfs":  # with a file-size limit nothing may grow, status.json included
        assert status["state"] == "failed" and "metrics.jsonl" in status["error"], status
    litter = [p.name for p in run.rglob("*") if ".tmp-" in p.name]
    assert not litter, f"temporary files left behind: {litter}"


def test_the_last_checkpoint_and_package_survive_and_resume_finishes(disk: Disk, tiny_config, monkeypatch):
    config = tiny_config(**{"run.dir": str(disk.root / "runs")}, train__epochs=1)
    run = modelcycle.train(config, progress=False)
    before = read_manifest(run)["weights"]["sha256"]

    # mid-run, after epoch 2's checkpoint: the next write fails (a metrics line, or one that fits
    # the last page of metrics.jsonl and then the next checkpoint)
    more = tiny_config(**{"run.dir": str(disk.root / "runs")}, train__epochs=4)
    with pytest.raises(UserError, match=f"could not write .*{disk.why()}"):
        modelcycle.train(more, resume=True, progress=False, callbacks=[FillAt(disk, epoch=2)])
    disk.free()
    assert checkpoint.load(run.checkpoints / "last.pt")["state"]["epoch"] == 2
    assert read_manifest(run)["weights"]["sha256"] == before

    # the disk fills as the package is written: the old one stays, whole, and no half copy is left
    write_package = runs.write_package

    def fill_then_write(*args, **kwargs):
        disk.fill()
        return write_package(*args, **kwargs)

    monkeypatch.setattr(runs, "write_package", fill_then_write)
    with pytest.raises(WriteFailed, match="could not write model package"):
        modelcycle.train(more, resume=True, progress=False)
    monkeypatch.setattr(runs, "write_package", write_package)
    disk.free()
    assert read_manifest(run)["weights"]["sha256"] == before
    verified_weights(read_manifest(run))
    assert not [p.name for p in run.path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]

    # space again: --resume writes the package of the finished run
    modelcycle.train(more, resume=True, progress=False)
    manifest = read_manifest(run)
    assert manifest["weights"]["sha256"] != before
    best = checkpoint.load(run.checkpoints / "last.pt")["state"]["best_epoch"]
    epoch_lines = {m["epoch"]: m for m in run.epoch_metrics()}
    assert sorted(epoch_lines) == [1, 2, 3, 4]
    assert manifest["metrics"]["val_loss"] == epoch_lines[best]["val_loss"]


def test_a_disk_full_before_the_run_starts_names_config_yaml(disk: Disk, tiny_config):
    config = tiny_config(**{"run.dir": str(disk.root / "runs")}, train__epochs=1)
    (disk.root / "runs").mkdir()
    disk.fill()
    try:
        with pytest.raises(WriteFailed, match="could not write the run's config .*config.yaml"):
            modelcycle.train(config, progress=False)
    finally:
        disk.free()
    with contextlib.suppress(FileNotFoundError):
        assert (disk.root / "runs" / "tiny" / ".lock").read_text() == ""
    assert os.listdir(disk.root / "runs" / "tiny") in ([".lock"], [])
