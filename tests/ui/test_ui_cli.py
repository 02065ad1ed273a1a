"""``modelcycle ui`` on the command line: its help, a missing runs folder, the warning when it
listens beyond this machine without a key, and a real start on 127.0.0.1 that SIGTERM stops."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from modelcycle.cli import app
from modelcycle.errors import UserError
from modelcycle.ui import server


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, ["ui", *args], env=env)


def test_help_names_every_option():
    text = " ".join(invoke("--help").output.split())
    for option in ("--runs", "--host", "--port", "--api-key-env", "read-only", "127.0.0.1"):
        assert option in text


def test_a_missing_runs_folder_is_a_clear_error(tmp_path: Path):
    result = invoke("--runs", str(tmp_path / "nope"))
    assert isinstance(result.exception, UserError)  # main() prints it without a traceback, exit 2
    assert "not a folder; pass the folder that holds your runs" in str(result.exception)


@pytest.fixture
def started(monkeypatch) -> list:
    """What would have been run, instead of binding a socket (0.0.0.0 must not open in a test)."""
    calls: list = []
    monkeypatch.setattr(server, "run", lambda app, cfg, lines, endpoints, keyed: calls.append((cfg, keyed)))
    return calls


def test_listening_beyond_this_machine_without_a_key_warns(tmp_path: Path, started: list):
    result = invoke("--runs", str(tmp_path), "--host", "0.0.0.0")
    assert result.exit_code == 0, result.output
    assert "open to every machine that reaches this one, with no API key" in " ".join(result.output.split())
    ((cfg, keyed),) = started
    assert cfg.host == "0.0.0.0" and not keyed
    quiet = invoke("--runs", str(tmp_path), "--host", "0.0.0.0", "--api-key-env", "UI_KEY", env={"UI_KEY": "k"})
    assert quiet.exit_code == 0 and "no API key" not in quiet.output and started[1][1] is True
    assert "no API key" not in invoke("--runs", str(tmp_path)).output  # 127.0.0.1: this machine only


def test_an_unset_key_variable_is_refused(tmp_path: Path, started: list):
    result = invoke("--runs", str(tmp_path), "--api-key-env", "UI_KEY_UNSET", env={"UI_KEY_UNSET": ""})
    assert isinstance(result.exception, UserError) and "UI_KEY_UNSET is unset or empty" in str(result.exception)
    assert not started


LOCAL = [("127.0.0.1", True), ("::1", True), ("localhost", True)]
ELSEWHERE = [("0.0.0.0", False), ("192.168.1.5", False), ("example.org", False)]


@pytest.mark.parametrize(("host", "local"), LOCAL + ELSEWHERE)
def test_loopback(host: str, local: bool):
    assert server.loopback(host) is local


def test_the_dashboard_starts_on_this_machine_and_stops_on_sigterm(ui_runs: Path):
    command = [sys.executable, "-m", "modelcycle", "ui", "--runs", str(ui_runs), "--port", "0"]
    env = {**os.environ, "COLUMNS": "400", "NO_ALBUMENTATIONS_UPDATE": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        output = ""
        for line in process.stdout:  # type: ignore[union-attr]
            output += line
            if match := re.search(r"listening on (http://\S+)", line):
                break
        assert match, output
        url = match.group(1)
        assert url.startswith("http://127.0.0.1:")
        runs = httpx.get(url + "/api/runs", timeout=60).json()
        assert "shapes" in [r["id"] for g in runs["groups"] for r in g["runs"]]
        with httpx.stream("GET", url + "/api/stream", params={"run": "live"}, timeout=30) as stream:
            assert stream.status_code == 200
            process.send_signal(signal.SIGTERM)  # with a stream open: it ends, and so does the server
            assert process.wait(60) in (0, -signal.SIGTERM)
    finally:
        process.kill()
        rest = process.stdout.read() if process.stdout else ""  # type: ignore[union-attr]
    assert "Traceback" not in rest and "ERROR" not in rest, rest
