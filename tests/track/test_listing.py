"""`modelcycle runs`: real runs listed best first by their monitored metric, with the settings that
set them apart, how each ended, and damaged or foreign folders noted instead of crashing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import assert_mentions, run_cli
from modelcycle.errors import UserError
from modelcycle.track.listing import RunSummary, list_runs, mark_differences
from modelcycle.track.status import Status

TRAINED = ["fast", "slow", "study/trial-0001", "stopped", "crashed"]


def _best(run: Path, metric: str, pick=max) -> float:
    """Straight from metrics.jsonl, independently of the listing (runs/torn's damaged line skipped)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.endswith("}")]
    return pick(r[metric] for r in rows if metric in r and "epoch_time_s" in r)


def test_runs_are_ranked_best_first_by_the_monitored_metric(runs_dir: Path):
    listing = list_runs(runs_dir)
    group = listing.groups[0]
    assert (group.task, group.metric, group.mode) == ("classify", "val_accuracy", "max")
    assert [g.task for g in listing.groups] == ["classify", None]  # runs/broken: no readable config.yaml
    names = [s.name for s in listing.runs]
    assert set(TRAINED) <= set(names)  # the study's trial was found one level down
    ranked = [s for s in listing.runs if s.epochs]
    values = [_best(s.path, "val_accuracy") for s in ranked]
    assert values == sorted(values, reverse=True)
    assert [s.best("val_accuracy", "max")[0] for s in ranked] == values
    assert set(names[len(ranked) :]) == {"stopped", "broken"}  # no finished epoch, no metric: last
    fast = next(s for s in listing.runs if s.name == "fast")
    assert fast.best("val_accuracy", "max")[1]["epoch"] in (1, 2) and len(fast.epochs) == 2 and fast.planned == 2


def test_a_loss_ranks_lowest_first(runs_dir: Path):
    listing = list_runs(runs_dir, sort="val_loss")
    assert listing.groups[0].mode == "min"
    values = [s.best("val_loss", "min")[0] for s in listing.runs if s.epochs]
    assert values == sorted(values)
    assert values[0] == min(_best(runs_dir / name, "val_loss", min) for name in ("fast", "slow", "study/trial-0001"))


def test_the_differences_column_names_only_what_was_changed(runs_dir: Path):
    runs = {s.name: s for s in list_runs(runs_dir).runs}
    assert runs["slow"].differs["train.lr"] == "1e-05" and runs["fast"].differs["train.lr"] == "0.01"
    assert runs["study/trial-0001"].differs["model.args.width"] == "4"
    assert runs["fast"].differs["model.args.width"] == "8"
    keys = set().union(*(s.differs for s in runs.values()))
    assert keys == {"train.lr", "model.args.width"}  # run.name, run.dir and data.root are the same or noise


def test_each_run_says_how_it_ended(runs_dir: Path):
    status = {s.name: s.status for s in list_runs(runs_dir).runs}
    assert status["fast"] == Status("finished")
    assert status["stopped"] == Status("interrupted", "resumable")
    assert status["crashed"].state == "failed" and "disk on fire" in status["crashed"].detail
    assert status["live"] == Status("running")
    assert status["killed"].state == "interrupted"  # status.json says running, but its process is gone


def test_damaged_and_foreign_folders_are_noted_not_fatal(runs_dir: Path):
    listing = list_runs(runs_dir)
    runs = {s.name: s for s in listing.runs}
    assert runs["broken"].status.state == "broken" and "not readable YAML" in runs["broken"].notes[0]
    assert runs["torn"].notes == ["metrics.jsonl: 1 unreadable line(s) skipped"] and len(runs["torn"].epochs) == 2
    assert [p.name for p in listing.others] == ["notes"]
    with pytest.raises(UserError, match="not a folder"):
        list_runs(runs_dir / "missing")
    with pytest.raises(UserError, match="'val_acc': no run has it; choose one of .*val_accuracy"):
        list_runs(runs_dir, sort="val_acc")


def test_duration_and_start_come_from_the_events(runs_dir: Path):
    fast = next(s for s in list_runs(runs_dir).runs if s.name == "fast")
    assert fast.started is not None and fast.duration_s is not None and fast.duration_s >= 0


def _summary(name: str, config: dict) -> RunSummary:
    return RunSummary(Path(name), name, Status("finished"), config=config)


def test_one_folder_written_two_ways_is_no_difference(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    a = _summary("a", {"data.root": "data", "train.lr": 0.1, "run.name": "a", "data.workers": 2})
    b = _summary("b", {"data.root": str(tmp_path / "data"), "train.lr": 0.1, "run.name": "b", "data.workers": 0})
    c = _summary("c", {"data.root": str(tmp_path / "other"), "train.lr": 0.1, "run.name": "c"})
    mark_differences([a, b])
    assert a.differs == {} and b.differs == {}
    mark_differences([a, b, c])
    assert c.differs == {"data.root": str(tmp_path / "other")}


def test_the_search_settings_a_trial_records_are_no_difference():
    """A study's trials record its tune.* settings (the space, the trial budget); a run trained
    on its own has the defaults. How a study searched says nothing about a trial's model."""
    trial = _summary("study/trial-0000", {"train.lr": 0.1, "tune.space": "space.yaml", "tune.trials": 2})
    alone = _summary("alone", {"train.lr": 0.2, "tune.space": None, "tune.trials": 20})
    mark_differences([trial, alone])
    assert trial.differs == {"train.lr": "0.1"} and alone.differs == {"train.lr": "0.2"}


def test_cli_table_and_json(runs_dir: Path):
    table = run_cli("runs", runs_dir)
    assert table.returncode == 0, table.stderr
    assert_mentions(table.stderr, "best = highest val_accuracy", "study/trial-0001", "train.lr=1e-05")
    assert_mentions(table.stderr, "interrupted (resumable)", "failed", "disk on fire")
    assert_mentions(table.stderr, "1 folder(s) hold no run", "notes")
    rows = json.loads(run_cli("runs", runs_dir, "--json", "--all", "--sort", "val_loss").stdout)
    assert rows[-1] == {"run": "notes", "status": "not a run"}
    scored = [r["best"] for r in rows if r.get("best") is not None]
    assert scored == sorted(scored) and rows[0]["metric"] == "val_loss"
    assert {"status", "epochs_done", "epochs_planned", "differs", "duration_s", "model"} <= set(rows[0])
