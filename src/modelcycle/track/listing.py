"""``modelcycle runs``: the run folders under a directory, best first, and what sets them apart.

Everything comes from the folders themselves (config.yaml, metrics.jsonl, events.log,
status.json), read leniently: one damaged run must not hide the others, so its problem becomes a
note on its row instead of an exception.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field
from math import inf
from pathlib import Path
from typing import Any

import yaml

from modelcycle.config import flatten
from modelcycle.errors import UserError
from modelcycle.track.status import Status, read_events, run_status

RUN_MARKS = ("config.yaml", "metrics.jsonl", "checkpoints")  # any of these: the folder is (or was) a run
RUN_PARTS = {"checkpoints", "model", "report"}  # never holds runs of its own
MAX_DEPTH = 4  # runs/<study>/<trial> and runs/<name>-crossval/fold-<i> are 2 deep; a data tree is not walked
# keys that differ between runs without saying anything about the model or its training
NOISE = (
    "run.",
    "eval.",
    "serve.",
    "track.",
    "data.workers",
    "data.cache",
    "data.cache_max_mb",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
)
SECTION_ORDER = ("model", "train", "data", "distill")


@dataclass
class RunSummary:
    path: Path
    name: str
    status: Status
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # flattened, model.args included
    rows: list[dict] = field(default_factory=list)  # metrics.jsonl
    started: dt.datetime | None = None
    duration_s: float | None = None
    differs: dict[str, str] = field(default_factory=dict)

    @property
    def epochs(self) -> list[dict]:
        return [r for r in self.rows if "epoch_time_s" in r]

    @property
    def model(self) -> str:
        return str(self.config.get("model.name", ""))

    @property
    def monitor(self) -> str:
        return str(self.config.get("train.monitor", "val_accuracy"))

    @property
    def mode(self) -> str:
        mode = self.config.get("train.monitor_mode", "auto")
        return mode if mode in ("min", "max") else default_mode(self.monitor)

    @property
    def planned(self) -> int | None:
        return self.config.get("train.epochs")

    def best(self, metric: str, mode: str) -> tuple[float, dict] | None:
        """The best value of ``metric`` over the epochs and that epoch's record."""
        scored = [(r[metric], r) for r in self.epochs if isinstance(r.get(metric), int | float)]
        if not scored:
            return None
        pick = max if mode == "max" else min
        return pick(scored, key=lambda pair: pair[0])

    def to_json(self, metric: str, mode: str) -> dict:
        best = self.best(metric, mode)
        at_best = best[1] if best else {}
        return {
            "run": self.name,
            "path": str(self.path),
            "status": self.status.state,
            "status_detail": self.status.detail,
            "model": self.model or None,
            "metric": metric,
            "best": best[0] if best else None,
            "best_epoch": at_best.get("epoch"),
            "at_best": {k: v for k, v in at_best.items() if k.startswith(("val_", "train_"))},
            "epochs_done": len(self.epochs),
            "epochs_planned": self.planned,
            "started": self.started.isoformat(timespec="seconds") if self.started else None,
            "duration_s": self.duration_s,
            "differs": self.differs,
            "notes": self.notes,
        }


@dataclass
class Listing:
    runs: list[RunSummary]  # best first
    others: list[Path]  # folders under the directory that hold no run
    metric: str  # the metric shown (and ranked by, unless ordered by date or name)
    mode: str


def default_mode(metric: str) -> str:
    """The trainer's rule for ``monitor_mode=auto``: losses go down, everything else up."""
    return "min" if "loss" in metric else "max"


def list_runs(root: str | Path = "runs", sort: str | None = None) -> Listing:
    """Every run under ``root`` (nested ones too), ordered by ``sort``: a metric (default: the
    metric most of the runs monitor, in its direction), ``date`` (newest first) or ``name``."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; pass the folder that holds your runs (run.dir, default runs)")
    found, others = find_runs(root)
    summaries = [summarize(path, root) for path in found]
    mark_differences(summaries)
    metric, mode = sort_metric(summaries, None if sort in ("date", "name") else sort)
    summaries.sort(key=lambda s: s.started or dt.datetime.min, reverse=True)  # newest first, also among equals
    if sort == "name":
        summaries.sort(key=lambda s: s.name)
    elif sort != "date":
        sign = -1.0 if mode == "max" else 1.0

        def rank(s: RunSummary) -> tuple[int, float, float]:
            best = s.best(metric, mode)
            if best is None:
                return (1, 0.0, 0.0)  # runs without the metric go last
            # ties are common on small validation sets: the lower val_loss (or higher accuracy) of that epoch wins
            tie = best[1].get("val_loss", inf) if metric != "val_loss" else -best[1].get("val_accuracy", -inf)
            return (0, sign * best[0], tie)

        summaries.sort(key=rank)
    return Listing(summaries, others, metric, mode)


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


def summarize(path: Path, root: Path) -> RunSummary:
    events = read_events(path / "events.log")
    summary = RunSummary(path, path.relative_to(root).as_posix() if path != root else path.name, Status("unknown"))
    summary.config = _read_config(path / "config.yaml", summary.notes)
    summary.rows = _read_metrics(path / "metrics.jsonl", summary.notes)
    summary.status = run_status(path, events) if summary.config else Status("broken")
    times = [when for when, message in events if when and message.startswith("fit start")]
    summary.started = times[0] if times else _mtime(path / "config.yaml")
    summary.duration_s = _duration(events, running=summary.status.state == "running")
    return summary


def mark_differences(summaries: list[RunSummary]) -> None:
    """Set each run's ``differs`` to its values of the keys whose values are not the same across
    ``summaries``; keys that never change the model (NOISE) are left out."""
    usable = [s for s in summaries if s.config]
    keys = sorted({k for s in usable for k in s.config if not k.startswith(NOISE)}, key=_key_order)
    varying = [k for k in keys if len({_canonical(k, s.config.get(k, "-")) for s in usable}) > 1]
    for s in usable:
        s.differs = {k: show(s.config.get(k, "-")) for k in varying}


def sort_metric(summaries: list[RunSummary], metric: str | None) -> tuple[str, str]:
    """The metric to rank by (given, or the one most runs monitor) and its direction (the runs'
    train.monitor_mode when they agree, else the trainer's rule)."""
    monitors = Counter(s.monitor for s in summaries if s.config)
    known = {k for s in summaries for r in s.epochs for k, v in r.items() if isinstance(v, int | float)} - {"step"}
    if metric and known and metric not in known:  # a typo would otherwise rank every run "without the metric"
        raise UserError(f"metric '{metric}': no run has it; choose one of {', '.join(sorted(known))}")
    metric = metric or (monitors.most_common(1)[0][0] if monitors else "val_accuracy")
    modes = {s.mode for s in summaries if s.config and s.monitor == metric}
    return metric, modes.pop() if len(modes) == 1 else default_mode(metric)


def _read_config(path: Path, notes: list[str]) -> dict[str, Any]:
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


def _read_metrics(path: Path, notes: list[str]) -> list[dict]:
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


def _duration(events: list[tuple[dt.datetime | None, str]], running: bool) -> float | None:
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


def _mtime(path: Path) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime)
    except OSError:
        return None


def _key_order(key: str) -> tuple[int, str]:
    section = key.split(".", 1)[0]
    return (SECTION_ORDER.index(section) if section in SECTION_ORDER else len(SECTION_ORDER), key)


def _canonical(key: str, value: Any) -> str:
    if key == "data.root" and isinstance(value, str):
        return str(Path(value).expanduser().resolve())  # the same folder written two ways is no difference
    return json.dumps(value, sort_keys=True)


def show(value: Any) -> str:
    """A setting as one short word: strings as they are, the rest as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))
