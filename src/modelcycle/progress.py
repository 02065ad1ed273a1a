"""Terminal output: progress bars, tables and warnings, all on stderr so stdout stays parseable
(``--json`` prints only JSON)."""

from __future__ import annotations

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
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
