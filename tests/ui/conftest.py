"""A runs folder as a user's looks after a few commands, and the dashboard over it on a real
HTTP server (uvicorn on 127.0.0.1, in a thread of the test process).

``ui_runs`` holds: ``shapes``, a finished run with its evaluation report; ``live``, a copy whose
status.json says it is running (this process's pid) and whose metrics.jsonl stops after epoch 2
(tests append epoch 3); ``study/trial-0000``, a trial of a tuning study beside study.md and
history.png; and ``shapes/monitor``, a prediction log of 450 images."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import modelcycle
from helpers import copy_run


@pytest.fixture(scope="session")
def ui_runs(tmp_path_factory, trained: Path) -> Path:
    from monitor.test_monitor_report import REFERENCE, write_log

    root = tmp_path_factory.mktemp("ui")
    finished = copy_run(trained, root)
    modelcycle.evaluate(finished)  # report/report.html and its PNGs, as `modelcycle evaluate` writes them
    runs = finished.parent
    live = runs / "live"
    shutil.copytree(trained, live)
    config = yaml.safe_load((live / "config.yaml").read_text())
    config["train"]["lr"] = 0.0123  # a setting that differs between the two runs
    (live / "config.yaml").write_text(yaml.safe_dump(config))
    lines = (trained / "metrics.jsonl").read_text().splitlines(keepends=True)
    (live / "metrics.jsonl").write_text("".join(line for line in lines if json.loads(line)["epoch"] <= 2))
    status = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(), "since": "2026-01-01T00:00:00"}
    (live / "status.json").write_text(json.dumps(status))
    study = runs / "study"
    shutil.copytree(trained, study / "trial-0000")
    (study / "study.md").write_text("# Study study\n")
    shutil.copy(finished / "report" / "curves.png", study / "history.png")
    write_log(finished / "monitor", np.concatenate([REFERENCE[:250], REFERENCE[:200] + 3.0]))
    return runs


def epoch_line(trained: Path, epoch: int) -> str:
    """The line that closes ``epoch`` in the trained run's metrics.jsonl."""
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    return json.dumps(next(r for r in rows if r.get("epoch") == epoch and "epoch_time_s" in r)) + "\n"


class UiServer:
    """``build_ui`` under uvicorn on a free port of 127.0.0.1 until ``stop``."""

    def __init__(self, root: Path, api_key: str | None = None):
        import uvicorn

        from modelcycle.serve.http import bind
        from modelcycle.ui.app import build_ui

        sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = build_ui(root, api_key, poll_s=0.1)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        app.state.server = self.server  # as serve/http.run does: open streams end when it stops
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the dashboard did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def ui(ui_runs: Path):
    server = UiServer(ui_runs)
    yield server
    server.stop()
