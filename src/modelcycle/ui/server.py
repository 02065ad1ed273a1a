"""Starting the dashboard: check the runs folder, read the API key as ``serve`` does, warn when
it listens beyond this machine with no key, then run it under uvicorn until Ctrl-C or SIGTERM."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from modelcycle.config import ServeSection
from modelcycle.errors import UserError
from modelcycle.progress import warn
from modelcycle.serve.auth import read_api_key
from modelcycle.serve.http import run
from modelcycle.ui import DEFAULT_PORT


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: may resolve to anything


def run_ui(
    runs: str | Path = "runs", host: str = "127.0.0.1", port: int = DEFAULT_PORT, api_key_env: str | None = None
) -> None:
    """Serve the dashboard over the runs folder ``runs`` (read-only) at http://HOST:PORT/."""
    from modelcycle.ui.app import build_ui

    root = Path(runs)
    if not root.is_dir():
        raise UserError(f"--runs {root}: not a folder; pass the folder that holds your runs (run.dir, default runs)")
    cfg = ServeSection(host=host, port=port, api_key_env=api_key_env, graceful_timeout_s=2)
    api_key = read_api_key(api_key_env)
    if api_key is None and not loopback(host):
        warn(
            f"--host {host}: the dashboard is open to every machine that reaches this one, with no API key; "
            "give one with --api-key-env NAME (export NAME=<key>) or listen on 127.0.0.1"
        )
    run(
        build_ui(root, api_key),
        cfg,
        [f"dashboard over {root.resolve()} (read-only)"],
        "dashboard {url}/",
        api_key is not None,
    )
