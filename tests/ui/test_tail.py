"""Following metrics.jsonl: only whole lines, bounded reads, and a file that starts over
(rewritten shorter, or replaced by a new file) is read again from its start with a reset."""

from __future__ import annotations

import json
import os
from pathlib import Path

from modelcycle.ui import tail
from modelcycle.ui.tail import Tail


def line(i: int) -> str:
    return json.dumps({"epoch": i, "val_loss": 1.0 / i}) + "\n"


def test_a_half_written_line_waits_for_its_newline(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(line(1) + line(2)[:9])
    follow = Tail(path)
    assert [row["epoch"] for _, row in follow.poll().lines] == [1]
    with open(path, "a") as handle:
        handle.write(line(2)[9:])
    ((offset, row),) = follow.poll().lines
    assert row["epoch"] == 2 and offset == path.stat().st_size  # the id a reconnecting client resumes from
    assert follow.poll().lines == []


def test_a_file_rewritten_shorter_or_replaced_starts_over(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(line(1) + line(2))
    follow = Tail(path)
    assert len(follow.poll().lines) == 2
    path.write_text(line(7))  # truncated and rewritten
    batch = follow.poll()
    assert batch.reset and [row["epoch"] for _, row in batch.lines] == [7]
    replacement = tmp_path / "new.jsonl"
    replacement.write_text(line(1) + line(2) + line(3))
    os.replace(replacement, path)  # rotated: another inode, longer than what was read
    batch = follow.poll()
    assert batch.reset and [row["epoch"] for _, row in batch.lines] == [1, 2, 3]


def test_reads_are_bounded_and_an_endless_line_is_skipped(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(tail, "CHUNK", 64)
    monkeypatch.setattr(tail, "MAX_LINE", 100)
    path = tmp_path / "metrics.jsonl"
    path.write_text(line(1) + "x" * 1000 + "\n" + "".join(line(i) for i in range(2, 30)))
    follow = Tail(path)
    seen: list[int] = []
    for _ in range(200):
        batch = follow.poll(max_chunks=2)  # at most 128 bytes a look
        seen += [row["epoch"] for _, row in batch.lines]
        assert len(follow.pending) <= 100  # never more than one short line held back
    assert seen == list(range(1, 30))
    assert follow.offset == path.stat().st_size


def test_a_missing_file_is_nothing_new(tmp_path: Path):
    follow = Tail(tmp_path / "metrics.jsonl")
    assert follow.poll().lines == [] and not follow.poll().reset
