"""``modelcycle predict`` through the installed command on many files: folders and quoted globs,
one line per file, an error line for each bad one, exit code 1 when any failed, a summary on
stderr, and stdout that stays pure JSON while the progress bar draws on a terminal."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_mentions, class_image, cli_command, cli_env, run_cli

CLASSES = ("class_0", "class_1", "class_2")


@pytest.fixture
def photos(tmp_path: Path) -> dict:
    """photos/: 8 good pictures (two in a subfolder), one corrupt and one truncated file."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    rng = np.random.default_rng(3)
    good = []
    for i in range(8):
        path = folder / ("more" if i >= 6 else "") / f"{i}.png"
        class_image(i % 3, rng).save(path)
        good.append(path)
    corrupt, truncated = folder / "corrupt.jpg", folder / "more" / "truncated.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    buffer = io.BytesIO()
    class_image(1, rng, size=48).save(buffer, "JPEG", quality=90)
    truncated.write_bytes(buffer.getvalue()[:-200])
    return {"folder": folder, "good": good, "corrupt": corrupt, "truncated": truncated}


def json_rows(stdout: str) -> dict[str, dict]:
    rows = [json.loads(line) for line in stdout.splitlines()]  # every line is JSON, nothing else
    return {row["path"]: row for row in rows}


def test_a_folder_with_bad_files_answers_the_good_ones_and_exits_1(trained: Path, photos):
    result = run_cli("predict", trained, photos["folder"], "--json", "--topk", "2")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    rows = json_rows(result.stdout)
    assert len(rows) == 10
    for path in photos["good"]:
        assert rows[str(path)]["label"] in CLASSES and len(rows[str(path)]["topk"]) == 2
    assert set(rows[str(photos["corrupt"])]) == {"path", "error"}
    assert "damaged image" in rows[str(photos["corrupt"])]["error"]
    assert "truncated" in rows[str(photos["truncated"])]["error"]
    assert_mentions(result.stderr, "8 answered, 2 failed")


def test_the_human_table_marks_each_error(trained: Path, photos):
    result = run_cli("predict", trained, photos["folder"])
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 10
    marked = {line.split(": ", 1)[0] for line in lines if ": error " in line}
    assert marked == {str(photos["corrupt"]), str(photos["truncated"])}
    for line in lines:
        assert ": error " in line or "top:" in line


def test_quoted_globs_are_expanded_and_an_empty_match_is_its_own_error(trained: Path, photos, tmp_path: Path):
    pattern = str(photos["folder"] / "**" / "*.png")  # no shell here: the command gets it as written
    odd = tmp_path / "shot[1].png"  # a file whose name looks like a glob is read as named
    class_image(2, np.random.default_rng(0)).save(odd)
    result = run_cli("predict", trained, pattern, str(tmp_path / "nothing-*.png"), odd, "--json")
    assert result.returncode == 1
    rows = json_rows(result.stdout)
    assert list(rows) == [*map(str, sorted(photos["good"])), str(tmp_path / "nothing-*.png"), str(odd)]
    assert "no file matches" in rows[str(tmp_path / "nothing-*.png")]["error"]
    assert rows[str(odd)]["label"] in CLASSES
    assert_mentions(result.stderr, "9 answered, 1 failed")


def test_all_good_files_exit_0_and_batch_size_does_not_change_the_answers(trained: Path, photos):
    answers = {}
    for size in ("1", "32"):
        result = run_cli("predict", trained, *photos["good"], "--json", "--batch-size", size)
        assert result.returncode == 0, result.stderr
        assert_mentions(result.stderr, "8 answered, 0 failed")
        answers[size] = json_rows(result.stdout)
    assert list(answers["1"]) == list(map(str, photos["good"]))
    for path, one in answers["1"].items():
        assert one["label"] == answers["32"][path]["label"]
        assert one["probability"] == pytest.approx(answers["32"][path]["probability"], abs=1e-5)


def test_json_stays_on_stdout_while_the_bar_draws_on_a_terminal(trained: Path, photos):
    """stderr a terminal, stdout a pipe (`predict --json > out.jsonl` typed in a shell)."""
    leader, follower = pty.openpty()
    drawn = bytearray()

    def drain():
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the command ended and its end of the terminal closed
                return
            if not chunk:
                return
            drawn.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = {**cli_env(), "TERM": "xterm", "COLUMNS": "100"}
    args = [*cli_command(), "predict", str(trained), str(photos["folder"]), "--json", "--batch-size", "1"]
    try:
        result = subprocess.run(args, stdout=subprocess.PIPE, stderr=follower, env=env, timeout=300, text=True)
    finally:
        os.close(follower)
    reader.join(10)
    os.close(leader)
    assert result.returncode == 1
    rows = json_rows(result.stdout)
    assert len(rows) == 10 and sum("error" in row for row in rows.values()) == 2
    terminal = drawn.decode(errors="replace")
    assert "predicting" in terminal and "8 answered, 2 failed" in terminal
    assert '"path"' not in terminal  # no answer went to the terminal instead of stdout
