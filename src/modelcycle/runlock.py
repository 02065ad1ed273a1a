"""One process writes a run folder: a lock on ``runs/NAME/.lock`` held for the run's whole life.

Without it, two ``train`` (or two ``--resume``) on one ``run.name`` both ran to the end: the
config.yaml of one beside the weights of the other, their metrics interleaved. The lock is taken
before anything in the folder is written (``--overwrite``'s deletion included) and released when
the run ends, however it ends.

It is a POSIX record lock (``fcntl.lockf``), not ``flock``: a flock belongs to the open file and
so is shared with every DataLoader worker forked from the trainer, which would keep a run killed
with SIGKILL locked until its orphaned workers noticed; a record lock belongs to the process, is
not inherited by ``fork``, and the kernel releases it the moment its process dies. Because closing
*any* descriptor of the file drops this process's lock, a process never opens the lock file of a
folder it holds (``_held``). The file itself stays (unlinking it would let a third process lock a
new file of the same name while the second still holds the old one); it records the holder's pid,
host and command, so a process that is refused can be told who holds it, and is emptied on
release. A record still there when the lock is granted was left by a holder that died without
releasing it: taking it over is noted in ``events.log``.

Under torchrun only rank 0 takes it: the other ranks write nothing in the folder. A filesystem that
cannot lock (some network mounts answer ENOLCK) runs unlocked, with a warning.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import socket
import sys
from pathlib import Path

from modelcycle.errors import UserError
from modelcycle.runfiles import writing

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks
    fcntl = None

LOCK_FILE = ".lock"
_held: dict[tuple[int, int], Path] = {}  # (device, inode) of each lock file this process holds


class RunLocked(UserError):
    """Another process is writing the run folder."""


class RunLock:
    def __init__(self, run_dir: Path, fd: int | None, previous: dict | None, key: tuple[int, int] | None):
        self.run_dir, self.fd, self.key = run_dir, fd, key
        self.previous = previous  # the record a dead holder left, if any

    @classmethod
    def acquire(cls, run_dir: Path, todo: str = "or choose another run.name") -> RunLock:
        """Lock ``run_dir`` (made if missing) or raise :class:`RunLocked` naming the holder."""
        with writing(run_dir, "run folder", "make room or choose another run.dir"):
            run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_FILE
        with contextlib.suppress(OSError):
            st = path.stat()
            if (st.st_dev, st.st_ino) in _held:
                raise RunLocked(
                    f"run folder {run_dir} is in use by this same process (an unfinished run of it); "
                    f"wait for that run to end, {todo}"
                )
        if fcntl is None:
            return cls(run_dir, None, None, None)
        with writing(path, "the run's lock file", "make the run folder writable"):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _record(fd)
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise RunLocked(_refusal(run_dir, holder, todo)) from None
            from modelcycle.progress import warn

            warn(
                f"{run_dir}: this filesystem cannot lock files ({exc.strerror}); nothing stops a second process "
                "from writing the same run folder"
            )
            return cls(run_dir, None, None, None)
        previous = _record(fd)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": _command(),
        }
        with contextlib.suppress(OSError):  # a full disk: the lock holds without the record
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        _held[key] = run_dir
        return cls(run_dir, fd, previous or None, key)

    def takeover_note(self) -> str | None:
        """For events.log: whose abandoned lock this run took over, or None."""
        p = self.previous
        if not p:
            return None
        who = f"pid {p.get('pid', '?')} on {p.get('host', '?')}"
        gone = "which is no longer running" if not _alive(p) else "which no longer held it"
        return f"took over the run lock left by {who} (since {p.get('since', '?')}), {gone}"

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)  # an empty file: nobody holds it, and nobody died holding it
        with contextlib.suppress(OSError):
            fcntl.lockf(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        _held.pop(self.key, None)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *_exc) -> None:
        self.release()


def _command() -> str:
    """This process's command line, short: ``modelcycle train configs/digits.yaml ...``."""
    if not sys.argv:
        return ""
    program = Path(sys.argv[0]).name
    program = "python -m modelcycle" if program == "__main__.py" else program
    return " ".join([program, *sys.argv[1:]])[:300]


def _record(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        record = json.loads(data.decode()) if data.strip() else {}
    except (OSError, ValueError):
        return {"pid": "?", "host": "?"}  # something is there, just not readable
    return record if isinstance(record, dict) else {}


def _refusal(run_dir: Path, holder: dict, todo: str) -> str:
    if holder.get("pid") not in (None, "?"):
        pid, host = holder["pid"], holder.get("host", "?")
        command = f", `{holder['command']}`" if holder.get("command") else ""
        since = f", since {holder['since']}" if holder.get("since") else ""
        who = f"another process (pid {pid} on {host}{command}{since})"
        stop = f"stop it (kill {pid}" + (f" on {host}" if host != socket.gethostname() else "") + ")"
    else:
        who, stop = "another process", f"stop the process that holds {run_dir / LOCK_FILE}"
    return f"run folder {run_dir} is in use: {who} is writing it. Wait for it to finish, {stop}, {todo}"


def _alive(record: dict) -> bool:
    if record.get("host") != socket.gethostname():
        return True  # another machine's processes cannot be looked at
    try:
        pid = int(record.get("pid", 0))
        if pid <= 0:
            return False
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, ValueError, TypeError, OverflowError):
        return False
    except PermissionError:
        return True
    return True
