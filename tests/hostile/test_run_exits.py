"""Issue 14, item 3 (the hang): a run that fails with its loader workers alive must exit. After an
uncaught exception the traceback keeps the loader alive into interpreter exit, where torch no
longer stops its workers and multiprocessing waits for workers that ignore SIGTERM: the process
used to hang for ever. Here a callback with a bug fails the run at step 1 with one worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli_env, tiny_overrides

CHILD = """
import sys
from modelcycle import track
from modelcycle.engine.callbacks import Callback


class Bug(Callback):
    def on_step_end(self, trainer):
        if trainer.state.step == 1:
            raise RuntimeError("a bug in a callback")


plain = track.callbacks
track.callbacks = lambda config, resume: [*plain(config, resume), Bug()]
from modelcycle.cli import main

sys.argv = ["modelcycle", *sys.argv[1:]]
main()
"""


def test_a_run_that_fails_with_loader_workers_exits(prepared: Path, tmp_path: Path):
    script = tmp_path / "buggy_train.py"
    script.write_text(CHILD)
    runs = tmp_path / "runs"
    args = tiny_overrides(prepared, runs, name="buggy", data__workers=1)
    try:
        result = subprocess.run(
            [sys.executable, str(script), "train", *args], capture_output=True, text=True, env=cli_env(), timeout=180
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the failed run never exited: its loader worker kept it waiting")
    assert result.returncode == 1 and "RuntimeError: a bug in a callback" in result.stderr, result.stderr
    status = json.loads((runs / "buggy" / "status.json").read_text())
    assert status["state"] == "failed" and "a bug in a callback" in status["error"]
    assert (runs / "buggy" / ".lock").read_text() == ""
