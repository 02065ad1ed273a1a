"""``metrics.jsonl`` (one JSON object a line) and ``events.log`` (what happened, in words)."""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        """Drop lines written after the checkpoint a resumed run starts from."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and _step(line) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62  # a torn last line from a killed process is dropped


class EventLog:
    def __init__(self, path: Path | None):
        self.path = path

    def __call__(self, message: str) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
