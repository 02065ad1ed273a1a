"""Terminal output: progress bars, tables and warnings, all on stderr so stdout stays parseable
(``--json`` prints only JSON).

Progress draws a rich bar on a terminal; elsewhere (CI logs, pipes, a file) a bar would be
redraw garbage, so the same work prints plain lines instead: one per step where steps are few
(tune's trials, an epoch), one per tenth of the way where they are many (batches, images).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from modelcycle.errors import UserError

console = Console(stderr=True, soft_wrap=True)  # log lines stay whole in CI logs
if not console.is_terminal:
    console.width = 160  # tables in logs and pipes: rich would squeeze them into 80 columns
stdout = Console(soft_wrap=True)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def info(message: str) -> None:
    console.print(message, highlight=False)


def make_progress(*extra_columns) -> Progress:
    """A bar that draws only on a terminal: in CI logs and pipes it stays silent."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
        # rich sends what is printed to stdout while a bar draws through the bar's console (stderr),
        # which is right when both are the terminal; with stdout piped (predict --json > out.jsonl)
        # the answers must stay on stdout
        redirect_stdout=stdout.is_terminal,
    )


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """``advance(n=1)`` as the work goes: a bar on a terminal, else a line per tenth of ``total``."""
    if not console.is_terminal:
        lines = TenthLines(description, total)
        yield lines.advance
        lines.close()
        return
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def line_every_s() -> float:
    """The least seconds between two progress lines off a terminal: work quicker than that says
    nothing. ``MODELCYCLE_PROGRESS_EVERY_S=0`` shows every tenth however quick."""
    value = os.environ.get("MODELCYCLE_PROGRESS_EVERY_S", "1")
    try:
        return max(float(value), 0.0)
    except ValueError:
        raise UserError(f"MODELCYCLE_PROGRESS_EVERY_S={value!r}: give a number of seconds, e.g. 1 or 0") from None


class TenthLines:
    """Progress where no bar can draw: ``description 40/100 (40%) 3.1s`` when another tenth is
    done and :func:`line_every_s` has passed since the last line, so a log gets at most eleven
    lines for any amount of work and none for quick work; a last line says where it ended."""

    def __init__(self, description: str, total: int):
        self.description, self.total = description, max(int(total), 0)
        self.done = self.shown = 0
        self.every = line_every_s()
        self.started = self.last = time.perf_counter()

    def advance(self, n: int = 1) -> None:
        self.done += n
        tenth = self.total and self.done * 10 // self.total > self.shown * 10 // self.total
        if tenth and time.perf_counter() - self.last >= self.every:
            self._line()

    def close(self) -> None:
        if self.done != self.shown and (self.shown or time.perf_counter() - self.started >= self.every):
            self._line()

    def _line(self) -> None:
        self.shown, self.last = self.done, time.perf_counter()
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        info(f"{self.description} {self.done}/{self.total}{share} {time.perf_counter() - self.started:.1f}s")


class StepBar:
    """Work of ``total`` long steps (tune's trials): on a terminal a bar whose ``status`` says how
    it goes (best so far, the running step's settings), with :meth:`line` printed above it; off a
    terminal, or with ``live=False`` (several processes share the terminal), only the lines."""

    def __init__(self, description: str, total: int, completed: int = 0, live: bool = True):
        self.live = live and console.is_terminal
        self.progress = make_progress(TextColumn("{task.fields[status]}")) if self.live else None
        self.task = None
        self.description, self.total, self.completed = description, total, completed

    def __enter__(self) -> StepBar:
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task(self.description, total=self.total, completed=self.completed, status="")
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, completed: int | None = None, status: str | None = None, description: str | None = None) -> None:
        if self.progress is None:
            return
        fields = {"completed": completed, "status": status, "description": description}
        self.progress.update(self.task, **{k: v for k, v in fields.items() if v is not None})

    def line(self, message: str) -> None:
        info(message)
