"""The rich tables of ``modelcycle runs`` and ``modelcycle compare`` (one builder, two views)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text

from modelcycle.track.listing import RunGroup, unit

STATUS_STYLE = {"finished": "green", "running": "cyan", "interrupted": "yellow", "failed": "red", "broken": "red"}


def runs_table(group: RunGroup, title: str, final: bool = False) -> Table:
    """One row per run of one task. The listing (``final=False``) shows the task's other summary
    metrics at each run's best epoch (the model package's epoch); the comparison shows the last
    epoch's train loss and summary metrics too, to see late overfitting."""
    summaries, metric, mode = group.runs, group.metric, group.mode
    extra = list(group.columns)
    if final:
        seen = {k for s in summaries for r in s.epochs for k in r}
        extra = [k for k in dict.fromkeys(["train_loss", "val_loss", metric, *group.columns]) if k in seen]
    table = Table(title=f"{title}; best = {'highest' if mode == 'max' else 'lowest'} {metric}")
    columns = ["run", "status", "model", "best", "@ep"]
    columns += [f"last {k}" if final else k for k in extra] + ["epochs"]
    columns += [] if final else ["started", "time"]
    if not final:
        columns.insert(0, "#")
    for column in [*columns, "differs"]:
        if column in ("run", "differs"):
            table.add_column(column, overflow="fold", ratio=1 if column == "run" else 3)
        else:
            table.add_column(column, justify="left" if column in ("status", "model") else "right", no_wrap=True)
    for rank, s in enumerate(summaries, start=1):
        best = s.best(metric, mode)
        source = (s.epochs[-1] if s.epochs else {}) if final else (best[1] if best else {})
        short = len(s.status.detail) <= 16  # a failed run's error goes to the last column, not in a narrow one
        notes = [*s.notes, *([] if short else [s.status.detail])]
        cells: list[str | Text] = [
            s.name,
            Text(str(s.status) if short else s.status.state, style=STATUS_STYLE.get(s.status.state, "")),
            s.model or "-",
            _number(best[0] if best else None),
            str(unit(best[1])) if best else "-",
            *[_number(source.get(k)) for k in extra],
            f"{len(s.epochs)}/{s.planned or '?'}",
        ]
        if not final:
            cells = [str(rank), *cells, s.started.strftime("%m-%d %H:%M") if s.started else "-"]
            cells.append(_duration(s.duration_s))
        differs = "\n".join(f"{k}={v}" for k, v in s.differs.items())
        table.add_row(*cells, "\n".join(part for part in (differs, *notes) if part))
    return table


def others_table(others: list[Path], root: Path) -> Table:
    table = Table(title="folders that are not runs")
    table.add_column("folder")
    table.add_column("why")
    for path in others:
        package = (path / "modelcycle.json").is_file() or (path / "model" / "modelcycle.json").is_file()
        why = "a model package without a run (compress, export)" if package else "no run in it or below"
        table.add_row(path.relative_to(root).as_posix(), why)
    return table


def _number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
