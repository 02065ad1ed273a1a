"""``modelcycle runs``: the run folders under a directory, one group per task, each best first
by that task's own metric, and what sets them apart.

Everything comes from the folders themselves (config.yaml, metrics.jsonl, events.log,
status.json, the package's modelcycle.json), read leniently: one damaged run must not hide the
others, so its problem becomes a note on its row instead of an exception.

Runs of different tasks never share a ranking: a classifier's val_loss and a language model's
are different quantities. Which tasks group together and what ranks them is the tasks' to say;
this module knows no task, so the caller (the CLI) passes ``judge``, a function from a run.task
to its :class:`TaskView` (tasks/registry.task_view).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from math import inf
from pathlib import Path
from typing import Any

from modelcycle.config_sections import RunSection
from modelcycle.errors import UserError
from modelcycle.track.folders import duration, find_runs, mtime, read_architecture, read_config, read_metrics
from modelcycle.track.status import Status, model_label, read_events, run_status

# keys that differ between runs without saying anything about the model or its training
NOISE = (
    "run.",
    "eval.",
    "serve.",
    "track.",
    "tune.",  # how the study searched, which its trials record; not a setting of the trial's model
    "data.workers",
    "data.cache",
    "data.cache_max_mb",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "lm.sample_",  # the samples logged while training, and what `modelcycle evaluate` generates
    "lm.eval_",
)
SECTION_ORDER = ("model", "lm", "train", "data", "distill")  # the differences column, in this order
FIRST_TASK = RunSection.model_fields["task"].default  # what a config.yaml without run.task trained


@dataclass(frozen=True)
class TaskView:
    """How runs of one task are listed: ``group``, the task whose runs they are ranked with (the
    task its packages record: a distilled student is an image classifier like classify's runs),
    and ``metrics``, its summary metrics (the first ranks runs that do not log their
    ``train.monitor``, as PPO's loop does not; the others are the listing's extra columns)."""

    group: str
    metrics: tuple[str, ...] = ()


Judge = Callable[[str], TaskView | None]  # run.task -> its view; None for a task nobody registered


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
    architecture: dict[str, Any] = field(default_factory=dict)  # what the run built (status.json, else its package)
    group: str | None = None  # the task it is ranked with (TaskView.group); None: its config is unreadable

    @property
    def task(self) -> str | None:
        return str(self.config.get("run.task", FIRST_TASK)) if self.config else None

    @property
    def epochs(self) -> list[dict]:
        """The rows a run is judged on: one per epoch, or, for a loop of its own that has no epochs
        (PPO), one per iteration."""
        closed = [r for r in self.rows if "epoch_time_s" in r]
        return closed or [r for r in self.rows if "iteration" in r]

    @property
    def model(self) -> str:
        """The model in a word (status.model_label); a run that recorded none, its ``model.name``."""
        return model_label(self.architecture) or str(self.config.get("model.name") or "")

    @property
    def monitor(self) -> str:
        return str(self.config.get("train.monitor", "val_accuracy"))

    @property
    def mode(self) -> str:
        mode = self.config.get("train.monitor_mode", "auto")
        return mode if mode in ("min", "max") else default_mode(self.monitor)

    @property
    def planned(self) -> int | None:
        if self.epochs and "epoch_time_s" not in self.epochs[0]:
            return None  # iterations of a loop of its own: train.epochs is not what it counts
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
            "task": self.task,
            "group": self.group,
            "status": self.status.state,
            "status_detail": self.status.detail,
            "model": self.model or None,
            "architecture": self.architecture or None,
            "metric": metric,
            "best": best[0] if best else None,
            "best_epoch": unit(at_best),
            "at_best": figures(at_best),
            "epochs_done": len(self.epochs),
            "epochs_planned": self.planned,
            "started": self.started.isoformat(timespec="seconds") if self.started else None,
            "duration_s": self.duration_s,
            "differs": self.differs,
            "notes": self.notes,
        }


@dataclass
class RunGroup:
    """The runs of one task (TaskView.group), ranked among themselves."""

    task: str | None  # None: runs whose config.yaml could not be read
    runs: list[RunSummary]  # best first (or newest first, or by name)
    metric: str  # the metric shown (and ranked by, unless ordered by date or name)
    mode: str
    columns: tuple[str, ...] = ()  # the task's other summary metrics some run logs: extra columns


@dataclass
class Listing:
    groups: list[RunGroup]  # one per task, the task with the most runs first
    others: list[Path]  # folders under the directory that hold no run

    @property
    def runs(self) -> list[RunSummary]:
        return [s for g in self.groups for s in g.runs]


def default_mode(metric: str) -> str:
    """The trainer's rule for ``monitor_mode=auto``: losses go down, everything else up."""
    return "min" if "loss" in metric else "max"


def unit(row: dict) -> int | None:
    """The epoch of a row, or the iteration of a loop without epochs (PPO)."""
    return row.get("epoch", row.get("iteration"))


def figures(row: dict) -> dict:
    """What a judged row measured: an epoch's train_*/val_* figures; an iteration's all but its
    counters, learning rate and timings."""
    if "epoch_time_s" in row:
        return {k: v for k, v in row.items() if k.startswith(("val_", "train_"))}
    skip = ("step", "iteration", "epoch", "lr")
    return {k: v for k, v in row.items() if k not in skip and not k.endswith("_s") and isinstance(v, int | float)}


def list_runs(
    root: str | Path = "runs", sort: str | None = None, task: str | None = None, judge: Judge | None = None
) -> Listing:
    """Every run under ``root`` (nested ones too), in one group per task (``judge`` says which
    tasks group together and by what they rank; without it each run.task is its own group, ranked
    by its runs' train.monitor), each ordered by ``sort``: a metric (default: the group's
    metric, in its direction), ``date`` (newest first) or ``name``. ``task``: only the runs of that
    task, or of the tasks grouped under it (``classify`` takes distill's runs too)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; pass the folder that holds your runs (run.dir, default runs)")
    found, others = find_runs(root)
    summaries = [summarize(path, root) for path in found]
    groups = group_runs(summaries, judge, task, where=str(root))
    metric = None if sort in ("date", "name") else sort
    check_metric(summaries, metric)
    out = []
    for name, members, view in groups:
        mark_differences(members)
        ranked = rank_group(members, *group_metric(members, metric, view), sort)
        out.append(RunGroup(name, members, ranked[0], ranked[1], shown_columns(members, ranked[0], view)))
    return Listing(out, others)


def group_runs(
    summaries: list[RunSummary], judge: Judge | None, task: str | None = None, where: str = "the runs"
) -> list[tuple[str | None, list[RunSummary], TaskView | None]]:
    """(group, its runs, its view) for each task among ``summaries``, the group with the most runs
    first (then by name); unreadable runs last. ``task`` keeps only that task's group, or runs of
    that very task; nothing left is an error naming the tasks there are."""
    views: dict[str, TaskView] = {}
    for s in summaries:
        if s.task is not None:
            if s.task not in views:
                views[s.task] = (judge(s.task) if judge else None) or TaskView(s.task)
            s.group = views[s.task].group
    if task is not None:
        kept = [s for s in summaries if task in (s.task, s.group)]
        if not kept:
            counts = Counter(s.task for s in summaries if s.task is not None)
            there = ", ".join(f"{name} ({n} run{'s' if n > 1 else ''})" for name, n in sorted(counts.items()))
            raise UserError(f"no run of task {task!r} in {where}; " + (f"the runs there: {there}" if there else "none"))
        summaries = kept
    members: dict[str | None, list[RunSummary]] = {}
    for s in summaries:
        members.setdefault(s.group, []).append(s)
    order = sorted(members, key=lambda g: (g is None, -len(members[g]), g or ""))
    by_group: dict[str, TaskView] = {}
    for name, view in views.items():  # the group's own task's view, if it is among the runs
        if view.group not in by_group or name == view.group:
            by_group[view.group] = view
    return [(g, members[g], by_group.get(g) if g is not None else None) for g in order]


def rank_group(members: list[RunSummary], metric: str, mode: str, sort: str | None) -> tuple[str, str]:
    """Order ``members`` in place: by ``metric`` (best first), by date (newest first) or by name."""
    members.sort(key=lambda s: s.started or dt.datetime.min, reverse=True)  # newest first, also among equals
    if sort == "name":
        members.sort(key=lambda s: s.name)
    elif sort != "date":
        sign = -1.0 if mode == "max" else 1.0

        def rank(s: RunSummary) -> tuple[int, float, float]:
            best = s.best(metric, mode)
            if best is None:
                return (1, 0.0, 0.0)  # runs without the metric go last
            # ties are common on small validation sets: the lower val_loss (or higher accuracy) of that epoch wins
            tie = best[1].get("val_loss", inf) if metric != "val_loss" else -best[1].get("val_accuracy", -inf)
            return (0, sign * best[0], tie)

        members.sort(key=rank)
    return metric, mode


def summarize(path: Path, root: Path) -> RunSummary:
    events = read_events(path / "events.log")
    summary = RunSummary(path, path.relative_to(root).as_posix() if path != root else path.name, Status("unknown"))
    summary.config = read_config(path / "config.yaml", summary.notes)
    summary.rows = read_metrics(path / "metrics.jsonl", summary.notes)
    summary.architecture = read_architecture(path)
    summary.status = run_status(path, events) if summary.config else Status("broken")
    times = [when for when, message in events if when and message.startswith("fit start")]
    summary.started = times[0] if times else mtime(path / "config.yaml")
    summary.duration_s = duration(events, running=summary.status.state == "running")
    return summary


def mark_differences(summaries: list[RunSummary]) -> None:
    """Set each run's ``differs`` to its values of the keys whose values are not the same across
    ``summaries``; keys that never change the model (NOISE) are left out."""
    usable = [s for s in summaries if s.config]
    keys = sorted({k for s in usable for k in s.config if not k.startswith(NOISE)}, key=_key_order)
    varying = [k for k in keys if len({_canonical(k, s.config.get(k, "-")) for s in usable}) > 1]
    for s in usable:
        s.differs = {k: show(s.config.get(k, "-")) for k in varying}


def logged(summaries: list[RunSummary]) -> set[str]:
    """The metrics the runs' judged rows carry."""
    return {k for s in summaries for r in s.epochs for k, v in r.items() if isinstance(v, int | float)} - {"step"}


def check_metric(summaries: list[RunSummary], metric: str | None) -> None:
    known = logged(summaries)
    if metric and known and metric not in known:  # a typo would otherwise rank every run "without the metric"
        raise UserError(f"metric '{metric}': no run has it; choose one of {', '.join(sorted(known))}")


def group_metric(summaries: list[RunSummary], metric: str | None, view: TaskView | None = None) -> tuple[str, str]:
    """The metric to rank one task's runs by and its direction: ``metric`` when some of them log
    it; else the one most of them monitor (train.monitor) if they log it; else the first of the
    task's summary metrics they log. The direction is the runs' train.monitor_mode when they
    agree on it for that metric, else the trainer's rule."""
    known = logged(summaries)
    monitors = Counter(s.monitor for s in summaries if s.config)
    monitored = monitors.most_common(1)[0][0] if monitors else None
    candidates = [metric, monitored, *(view.metrics if view else ())]
    chosen = next((m for m in candidates if m and m in known), None)
    chosen = chosen or metric or monitored or (view.metrics[0] if view and view.metrics else "val_accuracy")
    modes = {s.mode for s in summaries if s.config and s.monitor == chosen}
    return chosen, modes.pop() if len(modes) == 1 else default_mode(chosen)


def shown_columns(summaries: list[RunSummary], metric: str, view: TaskView | None) -> tuple[str, ...]:
    """The task's summary metrics other than ``metric`` that some run logs (val_loss and
    val_accuracy for a task that names none)."""
    wanted = view.metrics if view and view.metrics else ("val_accuracy", "val_loss")
    known = logged(summaries)
    return tuple(m for m in wanted if m != metric and m in known)


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
