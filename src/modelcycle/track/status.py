"""Whether a run finished, stopped, failed or is still going, from its folder alone.

``status.json`` is written when training starts (pid and host, so a reader can tell a live run
from one killed with SIGKILL) and when it ends (how it ended). Runs made before it existed are
judged from ``events.log``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelcycle.engine.callbacks import Callback
from modelcycle.errors import UserError
from modelcycle.runfiles import is_disk_error, replace_text, write_error

if TYPE_CHECKING:
    from modelcycle.engine.trainer import Trainer

STATUS_FILE = "status.json"


def write_json(path: Path, record: dict) -> None:
    """Write beside and rename, so a reader never sees half a file. On a full disk the rename's
    new copy cannot get a block, but rewriting the small file in place usually can: better a
    moment's torn file than a status that stays "running". Failing both, an error naming it."""
    text = json.dumps(record, indent=2)
    try:
        replace_text(path, text)
    except OSError as exc:
        if not (is_disk_error(exc) and path.is_file()):
            raise write_error(exc, path, "", _AGAIN) from None
        old = path.read_bytes()
        try:
            _overwrite(path, text.encode())
        except OSError:
            with contextlib.suppress(OSError):
                _overwrite(path, old)  # the old record is no longer than the space it had
            raise write_error(exc, path, "", _AGAIN) from None


def _overwrite(path: Path, data: bytes) -> None:
    with open(path, "r+b", buffering=0) as handle:
        handle.write(data)
        handle.truncate()


_AGAIN = "run the same command again (with --resume if the run has checkpoints)"


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


# what status.json records of the model (from the package record's "architecture")
MODEL_KEYS = ("name", "revision", "model_type", "architectures", "parameters")


def model_entry(meta: dict) -> dict | None:
    """What a run trains, from its package record (``modelcycle.json``, or the loop's ``meta``
    before there is one): the name it was built or loaded from (a registry name such as
    simple_cnn, a folder, a Hub id and its ``revision``) and, for a Hugging Face model, the
    ``model_type`` and ``architectures`` of its config.json. None when the record names none."""
    arch = meta.get("architecture")
    if not isinstance(arch, dict):
        return None
    entry = {key: arch[key] for key in MODEL_KEYS if arch.get(key) is not None}
    return entry or None


def model_label(entry: dict | None) -> str:
    """The model in a word: a Hugging Face model's ``model_type`` (qwen2, llama), else the name it
    was built from (simple_cnn, path/to/file.py:build)."""
    entry = entry or {}
    return str(entry.get("model_type") or entry.get("name") or "")


class StatusFile(Callback):
    """status.json: how the run stands, and what model it trains (``model``, :func:`model_entry`),
    so ``modelcycle runs`` names the real architecture of a run that has no package yet."""

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.run_dir is not None:
            record = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}
            write_json(trainer.run_dir / STATUS_FILE, {**record, **_model(trainer)})

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.run_dir is None:
            return
        state, exc = outcome()
        record = {"state": state, "since": now_iso(), **_model(trainer)}
        if state == "failed":
            record["error"] = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        if exc is None:
            write_json(trainer.run_dir / STATUS_FILE, record)
        else:
            with contextlib.suppress(UserError):  # the error on its way out stays the one reported
                write_json(trainer.run_dir / STATUS_FILE, record)


def _model(trainer: Trainer) -> dict:
    entry = model_entry(getattr(trainer, "meta", None) or {})
    return {"model": entry} if entry else {}


def read_status(path: Path) -> dict | None:
    """A run folder's status.json, or None when it has none or it is unreadable."""
    return _read(path / STATUS_FILE)


def outcome() -> tuple[str, BaseException | None]:
    """How the fit ended: finished, interrupted or failed. The trainer calls ``on_fit_end`` from a
    ``finally``, so the exception on its way out (if any) is visible here."""
    exc = sys.exc_info()[1]
    if exc is None:
        return "finished", None
    # TrainingInterrupted carries the shell's Ctrl-C code; importing it here would load torch for readers
    interrupted = isinstance(exc, KeyboardInterrupt) or getattr(exc, "exit_code", None) == 130
    return ("interrupted" if interrupted else "failed"), exc


@dataclass
class Status:
    state: str  # finished | interrupted | failed | running | unknown
    detail: str = ""  # resumable, early stop, the error, the host

    def __str__(self) -> str:
        return f"{self.state} ({self.detail})" if self.detail else self.state


def run_status(path: Path, events: list[tuple[dt.datetime | None, str]]) -> Status:
    """The run's state; ``events`` are its parsed ``events.log`` lines (see :func:`read_events`)."""
    resumable = (path / "checkpoints" / "last.pt").exists()
    early = any(message.startswith("early stop") for _, message in events)
    record = _read(path / STATUS_FILE)
    state = record.get("state") if record else _state_from_events(events)
    if state == "running" and record and not _alive(record):
        state = "interrupted"  # killed without a chance to say so (SIGKILL, power loss, OOM killer)
    if state == "running" and record and record.get("host") != socket.gethostname():
        return Status("running", f"on {record.get('host')}")
    if state == "interrupted":
        return Status("interrupted", "resumable" if resumable else "no checkpoint")
    if state == "failed":
        return Status("failed", str(record.get("error", "")) if record else "non-finite loss")
    if state == "finished":
        return Status("finished", "early stop" if early else "")
    return Status(state or "unknown")


def read_events(path: Path) -> list[tuple[dt.datetime | None, str]]:
    """``events.log`` as (time, message) pairs; a line without a readable time keeps None."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            when = dt.datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
            out.append((when, line[20:]))
        except ValueError:
            out.append((None, line))
    return out


def _state_from_events(events: list[tuple[dt.datetime | None, str]]) -> str | None:
    for _, message in reversed(events):
        if message.startswith("fit end"):
            return "finished"
        if message.startswith("stopped by"):
            return "interrupted"
        if message.startswith("non-finite loss"):
            return "failed"
        if message.startswith("fit start"):
            return "interrupted"  # it started and never said how it ended
    return None


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _alive(record: dict) -> bool:
    if record.get("host") != socket.gethostname():
        return True  # cannot look at another machine's processes: trust the file
    try:
        pid = int(record.get("pid", 0))
        if pid <= 0:
            return False
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True
