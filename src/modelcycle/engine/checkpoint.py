"""Crash-safe checkpoint files: write to a temporary file, fsync, rename into place.

A crash, SIGKILL or full disk at any moment leaves either the old checkpoint or the new one,
never a torn file. Loading uses ``weights_only=True``: a checkpoint can hold tensors and plain
data, never code.

:class:`Writer` splits that in two: the state is serialised into the temporary file (the page
cache, about as fast as copying it) before training goes on, and the fsync, the rename and the
folder's fsync, which wait for the disk, run on a thread while the next epoch computes. Writes
stay one at a time and in order, and a failed write is raised at the next save or at the end of
the fit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import torch

from modelcycle import runfiles
from modelcycle.errors import CheckpointError

TMP_MARK = ".tmp-"


_fsync_dir = runfiles.fsync_dir


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` that never leaves a partial file at ``path``."""
    finish_save(start_save(obj, path))


class PendingSave(NamedTuple):
    handle: IO[bytes]  # the temporary file, written and flushed, still open for its fsync
    tmp: Path
    path: Path


def start_save(obj: object, path: Path) -> PendingSave:
    """The first half of :func:`atomic_save`: ``obj`` serialised into a temporary file beside
    ``path``. Nothing is at ``path`` yet, so a crash from here on leaves the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    handle = None
    try:
        handle = open(tmp, "wb")  # noqa: SIM115 - closed by finish_save, after its fsync
        torch.save(obj, handle)
        handle.flush()
    except (OSError, RuntimeError) as exc:
        _discard(handle, tmp)
        if (cause := _os_error(exc)) is None:
            raise
        raise CheckpointError(_explain_write_error(cause, path)) from None
    return PendingSave(handle, tmp, path)


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc``: torch's zip writer, closing after a failed write, raises a
    RuntimeError ("unexpected pos") of its own on top of the full disk's OSError."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__context__
    return exc


def finish_save(pending: PendingSave) -> None:
    """The second half: the data on disk (fsync), then renamed into place and the folder fsynced."""
    handle, tmp, path = pending
    try:
        os.fsync(handle.fileno())
        handle.close()
        os.replace(tmp, path)
    except OSError as exc:
        _discard(handle, tmp)
        raise CheckpointError(_explain_write_error(exc, path)) from None
    _fsync_dir(path.parent)


def _discard(handle: IO[bytes] | None, tmp: Path) -> None:
    with contextlib.suppress(OSError):
        if handle is not None:
            handle.close()
        tmp.unlink()


class Writer:
    """Checkpoint writes finished on a background thread, one at a time, in the order asked for.

    ``submit(start, finish)`` waits for the previous write (and raises its error), runs ``start``
    (serialising into the page cache) and hands what it returned to ``finish`` (fsync, rename,
    links) on the thread. The thread is not a daemon: an exiting interpreter finishes the write.
    With ``background=False`` (the benchmark's "before") both run in the caller's thread."""

    def __init__(self, background: bool = True):
        self.background = background
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.waited_s = 0.0  # what training spent on checkpoints: serialising, and waits for a write
        self.written_s = 0.0  # what finishing the writes took, wherever it ran

    def submit(self, start: Callable[[], Any], finish: Callable[[Any], None]) -> None:
        began = time.perf_counter()
        self.wait()
        pending = start()
        if self.background:
            self._thread = threading.Thread(target=self._run, args=(finish, pending), name="checkpoint-writer")
            self._thread.start()
        else:
            self._timed(finish, pending)
        self.waited_s += time.perf_counter() - began

    def wait(self) -> None:
        """Block until every write asked for is on disk; raise the error of one that failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def settle(self) -> BaseException | None:
        """:meth:`wait` for a fit that is ending on another error: the write's error is returned, not raised."""
        try:
            self.wait()
        except Exception as exc:  # noqa: BLE001 - the caller reports it beside the error in flight
            return exc
        return None

    def _run(self, finish: Callable[[Any], None], pending: Any) -> None:
        try:
            self._timed(finish, pending)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread by wait()
            self._error = exc

    def _timed(self, finish: Callable[[Any], None], pending: Any) -> None:
        began = time.perf_counter()
        try:
            finish(pending)
        finally:
            self.written_s += time.perf_counter() - began


def atomic_link(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` (hard link, or a copy where links are not allowed).

    When ``dst`` already is ``src`` (best.pt linked to last.pt at the same step, after a resume),
    there is nothing to do; and POSIX ``rename`` between two links of one file succeeds without
    doing anything, so the temporary name is removed after it rather than left behind."""
    tmp = dst.with_name(f"{dst.name}{TMP_MARK}{os.getpid()}")
    try:
        with contextlib.suppress(FileNotFoundError):
            if os.path.samefile(src, dst):
                return
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # still there when tmp and dst were links to one file
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CheckpointError(_explain_write_error(exc, dst)) from None


def _explain_write_error(exc: OSError, path: Path) -> str:
    kept = f"the previous {path.name} is intact" if path.exists() else "no earlier checkpoint was there"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        cause, todo = runfiles.cause(exc), "free some space"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        cause, todo = "the run folder is not writable", "make the folder writable"
    else:
        cause, todo = runfiles.cause(exc), "fix the cause"
    return f"could not write checkpoint {path}: {cause}; {kept}. {todo.capitalize()}, then continue with --resume"


def load(path: Path, map_location: str | torch.device = "cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a modelcycle checkpoint ({type(exc).__name__}: {exc}); "
            "copy the newest checkpoints/step-*.pt over it to resume from there, "
            "or start the run again with --overwrite"
        ) from None


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files left by a process killed mid-write."""
    if folder.is_dir():
        for tmp in folder.glob(f"*{TMP_MARK}*"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def prune_numbered(folder: Path, keep: int) -> None:
    numbered = sorted(folder.glob("step-*.pt"))
    for old in numbered[:-keep] if keep > 0 else numbered:
        with contextlib.suppress(OSError):
            old.unlink()


def rng_state() -> dict:
    """Every random stream the process uses, as tensors and plain data (loadable weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        # this process's GPU only (each process trains on one): with every visible GPU's stream, a
        # checkpoint resumed where fewer GPUs are visible failed on the first one that is not there
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    random.setstate(_to_tuples(state["python"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, list):  # written by 0.1.0: one stream per visible GPU; ours is the current one's
            device = torch.cuda.current_device()
            cuda = cuda[device] if device < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, tuple | list) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
