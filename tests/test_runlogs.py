"""metrics.jsonl and events.log."""

from __future__ import annotations

from pathlib import Path

from modelcycle.runlogs import EventLog, MetricsLog


def test_metrics_log_round_trip_and_truncate(tmp_path: Path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    assert log.read() == []
    log.truncate_after(3)  # nothing to truncate yet
    for step in (1, 2, 3, 4):
        log.write({"step": step, "loss": 1.0 / step})
    with open(log.path, "a") as handle:
        handle.write('{"step": 5, "lo')  # torn by a kill mid-write
    log.truncate_after(3)
    assert [m["step"] for m in log.read()] == [1, 2, 3]


def test_event_log(tmp_path: Path):
    EventLog(None)("nowhere to go")  # no run folder: a no-op
    events = EventLog(tmp_path / "events.log")
    events("fit start")
    events("fit end")
    lines = (tmp_path / "events.log").read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == ["fit start", "fit end"]
