"""Progress off a terminal (CI logs, pipes): plain lines, one per tenth of the work and none for
quick work, never a bar's redraws; on stderr, so ``--json`` output stays parseable. Through the
CLI, as a pipe sees it."""

from __future__ import annotations

import json
import subprocess

from helpers import cli_command, cli_env, copy_run
from modelcycle import progress


def test_off_a_terminal_each_tenth_is_one_plain_line(monkeypatch, capsys):
    monkeypatch.setenv("MODELCYCLE_PROGRESS_EVERY_S", "0")
    with progress.progress_bar("crunching", 200) as advance:
        for _ in range(200):
            advance(1)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ")[1] for line in lines] == [f"{20 * i}/200" for i in range(1, 11)]
    assert lines[-1].startswith("crunching 200/200 (100%)")


def test_quick_work_says_nothing_and_work_that_ends_short_says_where(monkeypatch, capsys):
    with progress.progress_bar("quick", 50) as advance:  # the default: at least a second between lines
        advance(50)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("MODELCYCLE_PROGRESS_EVERY_S", "0")
    with progress.progress_bar("answers", 160) as advance:
        advance(5)  # generation that stopped before its token budget
    assert capsys.readouterr().err.startswith("answers 5/160 (3%)")


def test_evaluate_shows_progress_on_stderr_and_json_on_stdout(trained, tmp_path):
    run = copy_run(trained, tmp_path)  # evaluate writes the run's report
    env = {**cli_env(), "MODELCYCLE_PROGRESS_EVERY_S": "0"}
    result = subprocess.run([*cli_command(), "evaluate", str(run), "--json"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] >= 0  # stdout is the JSON and nothing else
    lines = [line for line in result.stderr.splitlines() if line.startswith("evaluating ")]
    assert lines and lines[-1].startswith("evaluating 6/6 (100%)"), result.stderr
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr  # no bar redraws in a pipe
