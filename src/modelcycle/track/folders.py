"""Reading run folders leniently, for ``modelcycle runs`` and ``compare`` (track/listing.py):
which folders are runs, and their config.yaml, metrics.jsonl, events.log durations and the model
they recorded. A damaged file becomes a note, never an exception.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import yaml

from modelcycle.config import flatten
from modelcycle.track.status import model_entry, read_status

RUN_MARKS = ("config.yaml", "metrics.jsonl", "checkpoints")  # any of these: the folder is (or was) a run
RUN_PARTS = {"checkpoints", "model", "report"}  # never holds runs of its own
MAX_DEPTH = 4  # runs/<study>/<trial> and runs/<name>-crossval/fold-<i> are 2 deep; a data tree is not walked


def find_runs(root: Path, depth: int = 0) -> tuple[list[Path], list[Path]]:
    """(run folders, folders without any run) under ``root``. A folder that holds runs deeper
    down (a study, a cross-validation) is a container, not junk."""
    is_run = any((root / mark).exists() for mark in RUN_MARKS)
    runs, others = ([root] if is_run else []), []
    if depth >= MAX_DEPTH:
        return runs, others
    try:
        children = sorted(
            p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and ".tmp-" not in p.name
        )
    except OSError:
        return runs, others
    for child in children:
        if is_run and child.name in RUN_PARTS:
            continue
        below, junk = find_runs(child, depth + 1)
        if below:
            runs += below
            others += junk
        elif not is_run:
            others.append(child)
    return runs, others


def read_config(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.is_file():
        notes.append("no config.yaml: not made by `modelcycle train`, or the file was removed")
        return {}
    try:
        tree = yaml.safe_load(path.read_text(errors="replace"))
    except (OSError, yaml.YAMLError) as exc:
        notes.append(f"config.yaml is not readable YAML ({str(exc).splitlines()[0]})")
        return {}
    if not isinstance(tree, dict) or not tree:
        notes.append("config.yaml holds no settings")
        return {}
    return flatten(tree, whole=())


def read_architecture(path: Path) -> dict[str, Any]:
    """What the run built, as status.json records it; for a run made before it did, as its
    package's modelcycle.json does."""
    recorded = (read_status(path) or {}).get("model")
    if isinstance(recorded, dict):
        return recorded
    try:
        manifest = json.loads((path / "model" / "modelcycle.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(manifest, dict):
        return {}
    return model_entry(manifest) or {}


def read_metrics(path: Path, notes: list[str]) -> list[dict]:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return []
    rows, bad = [], 0
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif i < len(lines) - 1:  # a torn last line is what a killed or live writer leaves; not worth a note
            bad += 1
    if bad:
        notes.append(f"metrics.jsonl: {bad} unreadable line(s) skipped")
    return rows


def duration(events: list[tuple[dt.datetime | None, str]], running: bool) -> float | None:
    """Wall time over all of the run's sessions (a resumed run has several), gaps left out."""
    total, start, last = 0.0, None, None
    for when, message in events:
        if when is None:
            continue
        if message.startswith("fit start"):
            if start is not None and last is not None:
                total += (last - start).total_seconds()
            start = last = when
        elif start is not None and not message.startswith(("resumed", "--resume")):  # those open the next session
            last = when
    if start is None or last is None:
        return None
    return total + ((dt.datetime.now() if running else last) - start).total_seconds()


def mtime(path: Path) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime)
    except OSError:
        return None
