"""``modelcycle compare``: runs' curves on one PNG, so a difference in settings can be seen as a
difference in training (faster, noisier, overfitting), not only in one final number. The runs
must be of one task (runs of tasks grouped together, such as classify and distill, count as one):
a classifier's curves and a language model's measure different things, so mixing them is refused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from modelcycle.errors import UserError  # noqa: E402
from modelcycle.track.folders import RUN_MARKS, find_runs  # noqa: E402
from modelcycle.track.listing import (  # noqa: E402
    Judge,
    RunGroup,
    RunSummary,
    check_metric,
    default_mode,
    group_metric,
    group_runs,
    mark_differences,
    shown_columns,
    summarize,
    unit,
)


@dataclass
class Comparison:
    group: RunGroup  # the runs in the order given, their task, metric and columns
    png: Path

    @property
    def runs(self) -> list[RunSummary]:
        return self.group.runs

    @property
    def metric(self) -> str:
        return self.group.metric

    @property
    def mode(self) -> str:
        return self.group.mode


def compare(
    paths: list[str | Path],
    out: str | Path = "compare.png",
    metric: str | None = None,
    task: str | None = None,
    judge: Judge | None = None,
) -> Comparison:
    """Plot train loss, val loss, ``metric`` (default: the runs' monitored metric, else their
    task's summary metric) and the learning rate against the epoch for every run in ``paths`` (a
    folder of runs stands for all of them). The runs must be of one task (``judge`` says which
    tasks group together); ``task`` keeps only that task's runs."""
    summaries = [s for path in paths for s in _expand(Path(path))]
    if not summaries:
        raise UserError("compare needs at least one run folder, e.g. modelcycle compare runs/a runs/b")
    groups = group_runs(summaries, judge, task, where=", ".join(map(str, paths)))
    named = [(name, members) for name, members, _ in groups if name is not None]
    if len(named) > 1:
        apart = "; ".join(f"{name}: {', '.join(s.name for s in members)}" for name, members in named)
        raise UserError(
            f"these runs are of {len(named)} different tasks, whose metrics do not compare ({apart}); compare the "
            f"runs of one task, e.g. --task {named[0][0]}, or list them all with `modelcycle runs`, which ranks "
            "each task apart"
        )
    kept = {id(s) for _, members, _ in groups for s in members}
    summaries = [s for s in summaries if id(s) in kept]  # in the order given
    view = next((v for _, _, v in groups if v is not None), None)
    mark_differences(summaries)
    check_metric(summaries, metric)
    metric, mode = group_metric(summaries, metric, view)
    group = RunGroup(named[0][0] if named else None, summaries, metric, mode, shown_columns(summaries, metric, view))
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: compare writes a PNG; give a file name ending in .png")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(summaries, metric, mode, out, group.columns)
    return Comparison(group, out)


def _expand(path: Path) -> list[RunSummary]:
    if any((path / mark).exists() for mark in RUN_MARKS):
        summary = summarize(path, path.parent)
        summary.name = str(path)
        return [summary]
    found = find_runs(path)[0] if path.is_dir() else []
    if not found:
        raise UserError(f"{path} is not a run folder (no config.yaml or metrics.jsonl) and holds no runs")
    out = []
    for run in found:
        summary = summarize(run, path)
        summary.name = str(path / summary.name)
        out.append(summary)
    return out


def panels(metric: str, others: tuple[str, ...] = ()) -> list[str]:
    """Train loss, val loss, the compared metric (if that is one of those losses: the first of the
    task's ``others`` that is not, else val accuracy), learning rate."""
    losses = ("train_loss", "val_loss")
    third = metric if metric not in losses else next((m for m in others if m not in losses), "val_accuracy")
    return ["train_loss", "val_loss", third, "lr"]


def plot(summaries: list[RunSummary], metric: str, mode: str, out: Path, others: tuple[str, ...] = ()) -> Path:
    keys = panels(metric, others)
    third_mode = mode if keys[2] == metric else default_mode(keys[2])
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    colours = plt.get_cmap("tab10")
    for i, summary in enumerate(summaries):
        style = {"color": colours(i % 10), "linestyle": ("-", "--", ":", "-.")[i // 10 % 4]}
        for ax, key in zip(axes.flat, keys, strict=True):
            xs, ys = _curve(summary, key)
            ax.plot(xs, ys, marker="o" if key.startswith("val_") else None, markersize=3, label=summary.name, **style)
        best = summary.best(keys[2], third_mode)
        if best is not None:  # the best epoch: where the model package came from, when this metric is monitored
            axes.flat[2].plot([unit(best[1])], [best[0]], marker="*", markersize=12, color=style["color"])
    for ax, key in zip(axes.flat, keys, strict=True):
        ax.set_title(key + (f" (best: {third_mode}, starred)" if key == keys[2] else ""))
        ax.set_xlabel("epoch" if any("epoch_time_s" in r for s in summaries for r in s.epochs) else "iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes.flat[3].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=9)
    fig.suptitle(f"{len(summaries)} runs")
    fig.tight_layout(rect=(0, 0.04 * (1 + (len(labels) - 1) // 4), 1, 1))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _curve(summary: RunSummary, key: str) -> tuple[list[float], list[float]]:
    """Per-epoch values, or for train loss and lr the finer log windows, at fractional epochs."""
    epochs = [r for r in summary.epochs if isinstance(r.get(key), int | float)]
    windows = [r for r in summary.rows if "epoch_time_s" not in r and isinstance(r.get(key), int | float)]
    steps_per_epoch = _steps_per_epoch(summary)
    if key in ("train_loss", "lr") and len(windows) >= 2 * len(epochs) and steps_per_epoch:  # finer, if it is
        return [r["step"] / steps_per_epoch for r in windows], [r[key] for r in windows]
    return [unit(r) for r in epochs], [r[key] for r in epochs]


def _steps_per_epoch(summary: RunSummary) -> float | None:
    first = next((r for r in summary.epochs if r.get("step") and r.get("epoch")), None)
    return first["step"] / first["epoch"] if first else None
