"""``metrics.jsonl`` (one JSON object a line) and ``events.log`` (what happened, in words).

A failed write (full disk) is a :class:`~modelcycle.runfiles.WriteFailed` naming the file; a
damaged line is a :class:`~modelcycle.runfiles.DamagedFile` naming the line, except a torn last
line, which is what a process killed mid-write (or one still writing) leaves.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from modelcycle.errors import CheckpointError
from modelcycle.runfiles import DamagedFile, read_bytes, replace_text, writing

CONTINUE = "run the same command with --resume"
FIX_METRICS = "remove the damaged line or restore the file from a copy"


class MetricsLog:
    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> int:
        """Drop lines written after the checkpoint a resumed run starts from, and damaged lines
        (a resumed run puts back the epochs it needs from its checkpoint); how many were damaged."""
        if not self.path.exists():
            return 0
        kept, damaged = [], 0
        for _, record, text in self._records(strict=False):
            if record is None:
                damaged += 1
            elif _step(record) <= step:
                kept.append(text)
        with writing(self.path, "metrics", CONTINUE):
            replace_text(self.path, "".join(line + "\n" for line in kept))
        return damaged

    def write(self, record: dict) -> None:
        with writing(self.path, "metrics", CONTINUE), open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def rewrite(self, records: list[dict]) -> None:
        with writing(self.path, "metrics", CONTINUE):
            replace_text(self.path, "".join(json.dumps(r) + "\n" for r in records))

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [record for _, record, _ in self._records(strict=True) if record is not None]

    def _records(self, strict: bool):
        """(line number, record or None if damaged, text) per non-empty line; a torn last line
        (no newline after it) is left out. ``strict``: a damaged line raises instead."""
        data = read_bytes(self.path, "metrics", FIX_METRICS)
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline, as every complete write does
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            record, text = _parse(raw)
            if record is None and strict:
                raise DamagedFile(
                    f"metrics {self.path} is damaged: line {number} is not "
                    f"{'UTF-8 text' if text is None else 'a JSON object'}; {FIX_METRICS}"
                )
            yield number, record, text
        if torn.strip() and (parsed := _parse(torn))[0] is not None:
            yield len(lines) + 1, *parsed  # a whole record that only lacks its newline


def _parse(raw: bytes) -> tuple[dict | None, str | None]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, None
    try:
        record = json.loads(text)
    except ValueError:
        return None, text
    return (record, text) if isinstance(record, dict) else (None, text)


def _step(record: dict) -> int:
    try:
        return int(record.get("step", 0))
    except (ValueError, TypeError):
        return 1 << 62


def epoch_records(records: list[dict]) -> list[dict]:
    """The once-per-epoch lines (they carry the epoch's time and validation metrics)."""
    return [r for r in records if "epoch_time_s" in r]


def reconcile(log: MetricsLog, history: list[dict], epochs: int, checkpoint: Path) -> str | None:
    """Make metrics.jsonl hold the ``epochs`` finished epochs of ``checkpoint`` as it saw them
    (``history``, its copy of their lines); a note for events.log if anything was put back.

    The package records the best epoch's line, so a file truncated before ``--resume`` would give
    epoch 3's weights epoch 1's figures. A checkpoint without a copy (written by an older version)
    refuses rather than guess."""
    records = log.read()
    have = {r.get("epoch"): r for r in epoch_records(records)}
    wanted = range(1, epochs + 1)
    if not history:
        missing = [e for e in wanted if e not in have]
        if missing:
            raise CheckpointError(
                f"{log.path} lacks the metrics of epoch(s) {', '.join(map(str, missing))}, which {checkpoint} has "
                "finished, and that checkpoint holds no copy of them, so the model package would record another "
                "epoch's metrics. Restore metrics.jsonl from a copy, or start the run again with --overwrite"
            )
        return None
    saved = {r["epoch"]: r for r in history}
    wrong = [e for e in wanted if _text(have.get(e)) != _text(saved.get(e))]  # as text: NaN equals NaN
    if not wrong:
        return None
    kept = [r for r in records if "epoch_time_s" not in r or r.get("epoch") not in saved]
    log.rewrite(sorted([*kept, *(saved[e] for e in wanted)], key=lambda r: (_step(r), "epoch_time_s" in r)))
    epochs_text = ", ".join(map(str, wrong))
    return f"metrics.jsonl lacked or disagreed on epoch(s) {epochs_text}: put back from {checkpoint.name}"


def _text(record: dict | None) -> str:
    return json.dumps(record, sort_keys=True)


class EventLog:
    def __init__(self, path: Path | None):
        self.path = path

    def __call__(self, message: str) -> None:
        if self.path is None:
            return
        with writing(self.path, "the event log", CONTINUE), open(self.path, "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
