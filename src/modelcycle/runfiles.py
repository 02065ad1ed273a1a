"""Reading and writing the files of a run folder or a model package, where damage and a full
disk become a one-line error (what file, what is wrong, what to do) instead of a traceback.

One reader (:func:`read_text`, :func:`read_json`) for every run file: a file that is not UTF-8,
not JSON, or not readable names itself. One conversion (:func:`write_error`) for every failed
write: ``ENOSPC`` and friends say which file could not be written and what to do. Imports nothing
heavy: config, loggers and status readers sit on it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

from modelcycle.errors import UserError

# errors that mean "the disk (or the process) cannot take more", not "the path is wrong"
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class DamagedFile(UserError):
    """A run or package file exists but cannot be read as what it should be."""


class WriteFailed(UserError):
    """A run file could not be written (full disk, quota, read-only folder)."""


def cause(exc: OSError) -> str:
    """An OSError in words a user can act on."""
    if exc.errno == errno.ENOSPC:
        return "the disk is full (no space left on device)"
    if exc.errno == errno.EDQUOT:
        return "the disk quota is exhausted"
    if exc.errno == errno.EFBIG:
        return "the file would exceed the largest file size allowed (see `ulimit -f`)"
    if exc.errno == errno.EROFS:
        return "the filesystem is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


def write_error(exc: OSError, path: Path | str, what: str, todo: str) -> WriteFailed:
    """``could not write WHAT PATH: CAUSE; TODO`` (raise it ``from None``)."""
    free = "free some space, then " if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return WriteFailed(f"could not write {what + ' ' if what else ''}{path}: {cause(exc)}; {free}{todo}")


@contextlib.contextmanager
def writing(path: Path | str, what: str, todo: str) -> Iterator[None]:
    """Turn an OSError from the block into :class:`WriteFailed` about ``path``."""
    try:
        yield
    except OSError as exc:
        raise write_error(exc, path, what, todo) from None


def is_disk_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


@contextlib.contextmanager
def disk_errors(where: Path | str, todo: str) -> Iterator[None]:
    """Like :func:`writing` for a block that also reads: only errors that mean the disk cannot
    take more become :class:`WriteFailed`, about the file the error names (else ``where``)."""
    try:
        yield
    except OSError as exc:
        if not is_disk_error(exc):
            raise
        raise write_error(exc, exc.filename or where, "", todo) from None


def read_bytes(path: Path, what: str, todo: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DamagedFile(f"could not read {what} {path}: {cause(exc)}; {todo}") from None


def decode(data: bytes, path: Path, what: str, todo: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DamagedFile(
            f"{what} {path} is damaged: line {line} (byte {exc.start}) is not UTF-8 text; {todo}"
        ) from None


def read_text(path: Path | str, what: str = "file", todo: str = "restore it from a copy") -> str:
    """The file as UTF-8 text; a missing file raises FileNotFoundError as usual, anything else
    that is wrong a :class:`DamagedFile` naming the file, the line and ``todo``."""
    path = Path(path)
    return decode(read_bytes(path, what, todo), path, what, todo)


def read_json(path: Path | str, what: str = "file", todo: str = "restore it from a copy") -> dict:
    """A JSON object from ``path``, or :class:`DamagedFile`."""
    path = Path(path)
    text = read_text(path, what, todo)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise DamagedFile(f"{what} {path} is damaged: not valid JSON ({exc}); {todo}") from None
    if not isinstance(value, dict):
        raise DamagedFile(f"{what} {path} is damaged: it holds {type(value).__name__}, not a JSON object; {todo}")
    return value


# ---------------------------------------------------------------- durable writes


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Every file and folder under ``folder`` on disk, so a rename of ``folder`` that survives a
    crash never points at files that did not."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(Path(root))


def replace_text(path: Path, text: str) -> None:
    """Write beside and rename, so a reader never sees half a file (the temporary goes on failure)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
