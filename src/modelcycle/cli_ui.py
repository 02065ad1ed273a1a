"""``modelcycle ui``: the local dashboard (registered on the main app by cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from modelcycle.ui import DEFAULT_PORT


def ui(
    runs: Path = typer.Option(Path("runs"), "--runs", help="Folder of run folders to show (run.dir)."),
    host: str = typer.Option(
        "127.0.0.1",
        help="Address to listen on: 127.0.0.1 is this machine only; 0.0.0.0 opens it to the network, "
        "which warns unless an API key is set.",
    ),
    port: int = typer.Option(DEFAULT_PORT, help="Port; 0 picks a free one and prints it."),
    api_key_env: str | None = typer.Option(
        None,
        help="Environment variable holding an API key, as for `serve`; the page then asks for it once "
        "(API clients send 'Authorization: Bearer KEY').",
    ),
):
    """A dashboard in the browser over a runs folder, read-only: the runs (status, best metric, what differs),
    live curves of running runs, each run's report, tuning studies (trials and plots) and the drift windows of
    served models' prediction logs. Open the printed URL; Ctrl-C stops it.

    Example: modelcycle ui --runs runs   (then http://127.0.0.1:8600/)
    """
    from modelcycle.ui.server import run_ui

    run_ui(runs, host=host, port=port, api_key_env=api_key_env)
