"""``modelcycle monitor``: the report over the whole log, and ``--watch``, which judges each window
as it completes and exits 1 at the first one that drifted (for cron jobs and CI)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from modelcycle.config import MonitorSection
from modelcycle.monitor import log
from modelcycle.monitor.drift import Thresholds
from modelcycle.monitor.windows import Traffic, open_traffic, score, windows

DRIFT_EXIT = 1


def progress_note(images: int, window: int, step: int) -> str:
    """How far the log is from its next complete window, in images: what an empty report explains."""
    complete = 0 if images < window else (images - window) // step + 1
    next_end = complete * step + window
    more = f"{next_end - images} more to go"
    if not complete:
        return f"{images} images so far; a window needs {window} (monitor.window), {more}"
    plural = "s" * (complete != 1)
    return f"{complete} complete window{plural} of {window} images; the next is complete at {next_end}, {more}"


def summarize(traffic: Traffic, cfg: MonitorSection, limits: Thresholds, folder: str | Path) -> dict:
    """Everything the report shows, as JSON-ready data (``modelcycle monitor --json`` prints it)."""
    step = cfg.step or cfg.window
    return {
        "model": traffic.model,
        "log": str(log.db_path(folder)),
        "reference": traffic.reference,
        "images": traffic.count,
        "window": cfg.window,
        "step": step,
        "note": progress_note(traffic.count, cfg.window, step),
        "thresholds": dataclasses.asdict(limits),
        "classes": traffic.profile["classes"],
        "class_shares": traffic.profile["class_shares"],
        "windows": windows(traffic, cfg.window, step, limits),
    }


def report(
    folder: str | Path,
    cfg: MonitorSection,
    reference: str | Path | None = None,
    model: str | None = None,
    psi_alert: float | None = None,
    out: str | Path | None = None,
) -> dict:
    """Score every window of the log in ``folder`` and write monitor.md + monitor.html (into
    ``out``, default ``folder``); returns the summary with ``report`` (the HTML file) added."""
    from modelcycle.monitor.report import write_report  # matplotlib: not for --watch

    limits = Thresholds.from_config(cfg, psi_alert)
    traffic = open_traffic(folder, cfg, reference, model)
    summary = summarize(traffic, cfg, limits, folder)
    summary["report"] = str(write_report(Path(out or folder), summary, limits))
    return summary


def explain(summary: dict) -> list[str]:
    """Lines under the CLI's table: why it is empty, or which test decided each warn and drift of
    the latest window."""
    if not summary["windows"]:
        return [f"no complete window yet: {summary['note']}"]
    latest = summary["windows"][-1]
    lines = [
        f"window {latest['index']}: {name} {s['drift']}: {s['reason']}"
        for name, s in latest["features"].items()
        if s["drift"] in ("warn", "drift")
    ]
    return [*lines, summary["note"]]


def alert_line(window: dict) -> str:
    """One line per drifted test of a window, naming the feature and the test that decided."""
    parts = [f"{name} ({window['features'][name]['reason']})" for name in window["drifted"]]
    return f"window {window['index']} ({window['start']} .. {window['end']}): drift in " + "; ".join(parts)


def printer(as_json: bool) -> Callable[[dict], None]:
    """What --watch shows per judged window: a line on stderr (ALERT naming the features at a
    drift) and, with --json, the window as one JSON line on stdout."""
    from rich.text import Text

    from modelcycle.progress import console, info

    def emit(window: dict) -> None:
        if as_json:
            print(json.dumps(window), flush=True)
        if window["drifted"]:
            console.print(Text.assemble(("ALERT ", "bold red"), alert_line(window)))
        else:
            info(f"window {window['index']} ({window['end']}): {window['verdict']}")

    return emit


def watch(
    folder: str | Path,
    cfg: MonitorSection,
    reference: str | Path | None,
    model: str | None,
    psi_alert: float | None,
    interval_s: float,
    duration_s: float | None,
    emit: Callable[[dict], None],
) -> int:
    """Judge the latest complete window, then each new one as the log grows; ``emit`` gets each
    judged window. Returns 1 at the first window that drifted, 0 when ``duration_s`` passes without."""
    limits = Thresholds.from_config(cfg, psi_alert)
    traffic = open_traffic(folder, cfg, reference, model)
    step = cfg.step or cfg.window
    complete = max(0, (traffic.count - cfg.window) // step + 1)
    if not complete:
        from modelcycle.progress import info

        info(f"no complete window yet: {progress_note(traffic.count, cfg.window, step)}")
    start = max(0, complete - 1)  # history before the latest window was judged by earlier runs
    deadline = None if duration_s is None else time.monotonic() + duration_s
    while True:
        while start * step + cfg.window <= traffic.count:
            window = {"index": start, **score(traffic, start * step, cfg.window, limits)}
            emit(window)
            if window["drifted"]:
                return DRIFT_EXIT
            start += 1
        if deadline is not None and time.monotonic() >= deadline:
            return 0
        time.sleep(interval_s if deadline is None else max(0.0, min(interval_s, deadline - time.monotonic())))
        traffic.refresh()
