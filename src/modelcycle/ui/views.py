"""What the dashboard shows, as JSON, from the runs folder alone: the runs table (the listing
``modelcycle runs`` prints, track/listing.py), each run's report files, the tuning studies with
their trials and plots, and the drift windows of each monitored server's prediction log.

Nothing here writes: the prediction log is opened read-only (``mode=ro``), unlike
``modelcycle monitor``, which may bring an old log's schema up to date.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

from modelcycle.config import MonitorSection
from modelcycle.errors import UserError
from modelcycle.monitor import log
from modelcycle.monitor.drift import Thresholds
from modelcycle.monitor.watch import summarize
from modelcycle.monitor.windows import Traffic
from modelcycle.tasks.registry import task_view
from modelcycle.track.listing import Listing, list_runs
from modelcycle.track.status import read_status

REPORT_KINDS = (".html", ".png", ".md")
STUDY_MARKS = ("study.md", "study.db")  # what `modelcycle tune` leaves in RUN_DIR/STUDY/
STUDY_FILES = ("study.md", "history.png", "importance.png", "best.yaml")
MONITOR_FILES = ("monitor.html", "monitor.md", "traffic.png", "drift.png", "classes.png")
SEARCH_DEPTH = 4  # as deep as the listing looks for runs (track/folders.MAX_DEPTH)


def runs(root: Path) -> dict:
    """Every run under ``root``, one group per task, as ``modelcycle runs --json`` has them, each
    run with ``id`` (its folder relative to ``root``: what the other calls take), ``ended`` and
    its report files."""
    listing = list_runs(root, judge=task_view)
    return finite({"root": str(root.resolve()), "groups": _groups(listing, root)})


def _groups(listing: Listing, root: Path) -> list[dict]:
    out = []
    for group in listing.groups:
        rows = []
        for summary in group.runs:
            row = summary.to_json(group.metric, group.mode)
            row["id"] = _relative(summary.path, root)
            row["ended"] = _ended(summary.path, row["status"])
            row["report"] = _files(summary.path / "report", root, REPORT_KINDS)
            rows.append(row)
        out.append(
            {
                "task": group.task,
                "metric": group.metric,
                "mode": group.mode,
                "columns": list(group.columns),
                "runs": rows,
            }
        )
    return out


def _ended(path: Path, state: str) -> str | None:
    """When the run stopped (status.json's time of its last word), None while it runs."""
    record = read_status(path) or {}
    return record.get("since") if state != "running" else None


def studies(root: Path) -> list[dict]:
    """Each tuning study under ``root`` (a folder holding study.md or study.db): its trials,
    listed as runs (so what differs between them is the parameters tried), and its plots."""
    out = []
    for folder in _find(root, STUDY_MARKS):
        try:
            listing = list_runs(folder, judge=task_view)
        except UserError:
            continue
        out.append(
            {
                "id": _relative(folder, root),
                "files": [f for f in (_relative(folder / n, root) for n in STUDY_FILES) if (root / f).is_file()],
                "groups": _groups(listing, root),
            }
        )
    return finite(out)


def monitors(root: Path) -> list[dict]:
    """The prediction logs under ``root`` (``serve --monitor runs/NAME/monitor`` puts one there)
    and the report files ``modelcycle monitor`` wrote beside them."""
    return [
        {"id": _relative(folder, root), "files": _files(folder, root, (".html", ".png"), MONITOR_FILES)}
        for folder in _find(root, (log.DB,))
    ]


def drift(folder: Path, cfg: MonitorSection | None = None) -> dict:
    """The drift windows of every model the log in ``folder`` holds, scored as ``modelcycle
    monitor FOLDER`` scores them (its default window, the profile the server stored)."""
    cfg = cfg or MonitorSection()
    limits = Thresholds.from_config(cfg)
    try:
        conn = sqlite3.connect(log.db_path(folder).resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise UserError(f"{log.db_path(folder)} cannot be opened: {exc}") from None
    try:
        out = []
        for model in log.models(conn):
            profile = log.stored_profile(conn, model)
            if profile is None:
                out.append({"model": model, "error": "no reference profile stored; `modelcycle monitor` needs one"})
                continue
            traffic = Traffic(conn, model, profile, f"the profile {model} was served with")
            traffic.refresh()
            out.append(summarize(traffic, cfg, limits, folder))
        return finite({"models": out, "window": cfg.window})
    except sqlite3.Error as exc:
        raise UserError(
            f"{log.db_path(folder)} cannot be read ({exc}); `modelcycle monitor {folder}` brings a log "
            "written by an older server up to date"
        ) from None
    finally:
        conn.close()


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no word for them (a diverged run logs
    NaN losses) and the browser's JSON.parse refuses Python's spelling."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _find(root: Path, marks: tuple[str, ...], depth: int = 0) -> list[Path]:
    """Folders under ``root`` (itself included) holding one of ``marks``, at most SEARCH_DEPTH down."""
    found = [root] if any((root / m).is_file() for m in marks) else []
    if depth >= SEARCH_DEPTH:
        return found
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return found
    for child in children:
        if child.name not in ("checkpoints", "model") and not child.is_symlink():
            found += _find(child, marks, depth + 1)
    return found


def _files(folder: Path, root: Path, kinds: tuple[str, ...], order: tuple[str, ...] = ()) -> list[str]:
    """The files of ``kinds`` in ``folder``, those named in ``order`` first, the rest by name."""
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in kinds)
    except OSError:
        return []
    names.sort(key=lambda n: order.index(n) if n in order else len(order))
    return [_relative(folder / n, root) for n in names]


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path != root else "."
