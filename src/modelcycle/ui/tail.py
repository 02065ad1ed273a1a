"""Following a run's ``metrics.jsonl`` as the trainer appends to it, for the live curves.

Every read is bounded (``CHUNK`` bytes), so a huge file or a client far behind never loads a
whole file into memory. A line is handed on only once its newline is there: the trainer's
last line may be half-written when we look. A file that got shorter than what was read
(rewritten, truncated by hand) or was replaced by another file (rotation: a new inode) is read
again from its start, and the reader is told so (``reset``), so the page drops its points
instead of mixing two histories. A single line longer than ``MAX_LINE`` is skipped, not buffered.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 64 * 1024
MAX_LINE = 1024 * 1024


@dataclass
class Batch:
    """What one look at the file found: ``lines`` (each with the byte offset just after it, an
    SSE event id to resume from) and whether the file started over since the last look."""

    lines: list[tuple[int, dict]] = field(default_factory=list)
    reset: bool = False


class Tail:
    def __init__(self, path: Path, offset: int = 0):
        self.path = path
        self.offset = max(0, offset)  # bytes consumed: complete lines only
        self.inode: int | None = None
        self.pending = b""  # the start of a line whose newline has not been written yet
        self.skipping = False  # inside an over-long line: drop bytes up to its newline

    def poll(self, max_chunks: int = 16) -> Batch:
        """Read what was appended since the last call, at most ``max_chunks`` chunks (the rest
        next time), and return its complete lines that are JSON objects."""
        batch = Batch()
        try:
            stat = os.stat(self.path)
        except OSError:
            return batch  # not written yet (a run starting) or removed: nothing new
        read_to = self.offset + len(self.pending)
        replaced = self.inode is not None and stat.st_ino != self.inode
        if replaced or stat.st_size < read_to:
            self.offset, self.pending, self.skipping, batch.reset = 0, b"", False, True
            read_to = 0
        self.inode = stat.st_ino
        try:
            with open(self.path, "rb") as handle:
                handle.seek(read_to)
                for _ in range(max_chunks):
                    data = handle.read(CHUNK)
                    if not data:
                        break
                    self._split(data, batch)
        except OSError:
            pass  # removed between stat and open: the next look says so
        return batch

    def _split(self, data: bytes, batch: Batch) -> None:
        if self.skipping:  # the rest of an over-long line: consumed, never kept
            end = data.find(b"\n")
            if end < 0:
                self.offset += len(data)
                return
            self.offset += end + 1
            self.skipping, data = False, data[end + 1 :]
        data, self.pending = self.pending + data, b""
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            line, start = data[start:end], end + 1
            self.offset += len(line) + 1
            row = _parse(line)
            if row is not None:
                batch.lines.append((self.offset, row))
        rest = data[start:]
        if len(rest) > MAX_LINE:  # no newline in sight: count its bytes, keep none of them
            self.offset += len(rest)
            self.skipping = True
        else:
            self.pending = rest


def _parse(line: bytes) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None  # a damaged line: the listing notes it; the curves go on without it
    return row if isinstance(row, dict) else None
