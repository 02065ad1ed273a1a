"""Hyperparameter search end to end on tiny image folders (36 images of 16x16, about a second a
trial): the CLI study and its report, resume, pruning, failed trials, two worker processes on one
sqlite file, a worker killed with SIGKILL mid-trial, and storages that cannot be used. Only the
first study and the killed worker run the command in a fresh process: each costs an import of
torch and scikit-learn (about 8 s of CPU)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from PIL import Image

from helpers import assert_mentions, cli_env, read_jsonl, run_cli, tiny_overrides
from modelcycle import api
from modelcycle.config import load_config
from modelcycle.errors import ConfigError, UserError
from modelcycle.tuning.report import pruning_savings

SPACE = """\
train.lr: {type: float, low: 0.001, high: 0.05, log: true}
model.args.width: {type: int, low: 4, high: 8, step: 4}
train.optimizer: [adamw, sgd]
"""


def _study(folder: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def linear(tmp_path, prepared, linear_model_file):
    """Overrides for trials of a linear model with SGD: lr 0.01 learns the squares in an epoch or two,
    lr 1e-6 does not move and lr 1e38 overflows to a NaN loss within two steps."""

    def make(name: str = "lin", **extra) -> list[str]:
        values = {"model__name": linear_model_file, "model__args": "{}", "train__optimizer": "sgd", **extra}
        return tiny_overrides(prepared, tmp_path / "runs", name=name, **values)

    return make


def test_cli_study_makes_a_run_per_trial_and_the_report_then_resumes(tmp_path, prepared):
    space = _write(tmp_path / "space.yaml", SPACE)
    overrides = tiny_overrides(prepared, tmp_path / "runs", name="cnn") + ["tune.startup_trials=1"]
    result = run_cli("tune", *overrides, "--space", space, "--trials", "2", "--sampler", "tpe")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert_mentions(result.stderr, "trial 1/2", "trial 2/2", "best trials", "2 trials finished", "study.md")
    # inside each trial: what it tries, then a line per epoch; plain lines in a pipe, no bar redraws
    assert_mentions(result.stderr, "trial #0 started: train.lr=", "trial #1 started: train.lr=")
    assert_mentions(result.stderr, "#0 epoch 1/2", "#0 epoch 2/2", "#1 epoch 2/2", "val_accuracy=")
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr

    folder = tmp_path / "runs" / "cnn-tune"
    study = _study(folder, "cnn-tune")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in study.trials:  # each trial is a whole run whose config holds the trial's parameters
        run = folder / f"trial-{trial.number:04d}"
        config = load_config(run / "config.yaml")
        assert config.train.lr == trial.params["train.lr"]
        assert config.model.args["width"] == trial.params["model.args.width"]
        assert config.train.optimizer == trial.params["train.optimizer"]
        assert (run / "model" / "modelcycle.json").is_file() and (run / "checkpoints" / "best.pt").exists()
        assert trial.user_attrs["run"] == str(run)
        epochs = [m for m in read_jsonl(run / "metrics.jsonl") if "val_accuracy" in m]
        assert trial.value == max(m["val_accuracy"] for m in epochs)
    for png in ("history.png", "importance.png"):
        assert Image.open(folder / png).size[0] > 100
    best = study.best_trial
    report = (folder / "study.md").read_text()
    assert_mentions(report, f"**{best.number} (best)**", f"best: trial {best.number}", "best.yaml")
    best_config = load_config(folder / "best.yaml")  # a whole recipe `modelcycle train` takes as it is
    assert best_config.train.lr == best.params["train.lr"] and best_config.run.name == "cnn-tune-best"
    assert best_config.data.root == str(prepared)

    # the same study again with a larger budget continues it: trials 0 and 1 are not run again
    first_metrics = (folder / "trial-0000" / "metrics.jsonl").read_bytes()
    resumed = api.tune(None, space, overrides, trials=3)
    assert resumed.finished == 3 and len(_study(folder, "cnn-tune").trials) == 3
    assert (folder / "trial-0002" / "model" / "modelcycle.json").is_file()
    assert (folder / "trial-0000" / "metrics.jsonl").read_bytes() == first_metrics
    assert api.tune(None, space, overrides, trials=3).finished == 3  # nothing left to do
    assert len(_study(folder, "cnn-tune").trials) == 3
    with pytest.raises(ConfigError) as info:  # a study cannot change what it optimises
        api.tune(None, space, [*overrides, "train.monitor=val_loss"], trials=4)
    assert_mentions(str(info.value), "cnn-tune", "maximize val_accuracy", "--study")


def test_median_pruner_stops_the_bad_trials_and_counts_the_epochs_saved(tmp_path, linear):
    space = _write(tmp_path / "space.yaml", "train.lr: [0.000001, 0.01]\n")
    overrides = linear(train__epochs=4, train__monitor="val_loss")
    overrides += ["tune.prune_startup_trials=1", "tune.prune_warmup_epochs=1"]
    result = api.tune(None, space, overrides, trials=6, sampler="random", pruner="median")

    trials = _study(result.folder, result.study).trials
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, [(t.params, t.state) for t in trials]
    assert all(t.params["train.lr"] == 0.000001 for t in pruned)
    assert result.best_params == {"train.lr": 0.01} and result.direction == "minimize"
    for trial in pruned:  # stopped early, and still a whole run folder
        run = Path(trial.user_attrs["run"])
        epochs = [m for m in read_jsonl(run / "metrics.jsonl") if "epoch_time_s" in m]
        assert len(epochs) == trial.user_attrs["epochs_run"] < 4
        assert (run / "model" / "modelcycle.json").is_file()
        assert "pruned by the tuner" in (run / "events.log").read_text()
    saved = sum(4 - t.user_attrs["epochs_run"] for t in pruned)
    assert pruning_savings(trials)["saved"] == saved > 0
    assert f"{saved} epochs saved" in result.report.read_text()


def test_hyperband_pruner_runs_a_study(tmp_path, linear):
    space = _write(tmp_path / "space.yaml", "train.lr: [0.000001, 0.01]\n")
    result = api.tune(None, space, linear(train__epochs=3), trials=4, sampler="random", pruner="hyperband")
    trials = _study(result.folder, result.study).trials
    assert result.finished == 4 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert all(t.user_attrs["epochs_run"] == 3 for t in trials if t.state.name == "COMPLETE")
    assert result.best_params == {"train.lr": 0.01}


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, linear):
    space = _write(tmp_path / "space.yaml", "train.lr: [1.0e+38, 0.01]\n")
    result = api.tune(None, space, linear(), trials=5, sampler="grid")  # the grid has 2 points: 2 trials
    trials = _study(result.folder, result.study).trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "FAIL"]
    failed = next(t for t in trials if t.state == optuna.trial.TrialState.FAIL)
    assert failed.params["train.lr"] == 1e38 and "NaN" in failed.user_attrs["error"]
    assert result.finished == 2 and result.best_params == {"train.lr": 0.01}
    assert_mentions(result.report.read_text(), "| FAIL |", "the loss became NaN")


def test_a_study_whose_first_trials_all_fail_stops_with_their_message(tmp_path, linear):
    space = _write(tmp_path / "space.yaml", "train.lr: [1.0e+38, 1.0e+37]\n")
    with pytest.raises(UserError) as info:
        api.tune(None, space, linear(), trials=10, sampler="random")
    assert_mentions(str(info.value), "the first 3 trials", "all failed", "NaN")
    assert len(_study(tmp_path / "runs" / "lin-tune", "lin-tune").trials) == 3


def test_two_workers_share_one_sqlite_study(tmp_path, linear):
    space = _write(tmp_path / "space.yaml", "train.lr: {type: float, low: 0.001, high: 0.1, log: true}\n")
    result = api.tune(None, space, linear(name="two"), trials=4, workers=2)  # two spawned processes
    assert "sqlite" in result.storage and result.finished == 4
    # two workers may both ask for the last trial at once: the later-numbered one gives way unrun
    trials = [t for t in _study(result.folder, "two-tune").trials if not t.user_attrs.get("surplus")]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}
    assert len({t.params["train.lr"] for t in trials}) == len(trials)  # each worker draws its own values
    for trial in trials:
        assert (Path(trial.user_attrs["run"]) / "model" / "modelcycle.json").is_file()


def test_a_trial_asked_when_earlier_ones_fill_the_budget_gives_way_unrun(tmp_path):
    """The race of two workers at the last trial, played out by hand: three finished trials and
    one running leave no room in a budget of 4 for trial 4 (a budget of 5 would); a trial that
    gives way fails without suggesting or training, and stays out of the count."""
    from modelcycle.progress import StepBar
    from modelcycle.tuning.search import Objective
    from modelcycle.tuning.study import Tally

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="race")
    for _ in range(3):
        study.tell(study.ask(), 1.0)
    study.ask()  # another worker's trial, still running
    config = load_config(None, [f"run.dir={tmp_path}"])
    trial = study.ask()
    bar = StepBar("trials", 4, live=False)
    assert not Objective(config, None, tmp_path, 1, budget=5, bar=bar)._surplus(trial)
    assert Objective(config, None, tmp_path, 1, budget=4, bar=bar)._surplus(trial)
    study.optimize(Objective(config, None, tmp_path, 1, budget=4, bar=bar), n_trials=1, catch=(Exception,))
    last = study.trials[-1]
    assert last.state.name == "FAIL" and last.user_attrs == {"surplus": True} and last.params == {}
    assert Tally.of(study.trials).finished == 3 and not list(tmp_path.glob("trial-*"))


def test_a_worker_killed_mid_trial_leaves_it_failed_and_the_study_completes(tmp_path, linear):
    space = _write(tmp_path / "space.yaml", "train.lr: {type: float, low: 0.001, high: 0.1, log: true}\n")
    overrides = [*linear(name="kill", train__epochs=10), "tune.heartbeat_s=1", "tune.grace_s=2"]
    folder = tmp_path / "runs" / "kill-tune"
    worker = subprocess.Popen(
        [sys.executable, "-m", "modelcycle", "tune", *overrides, "--space", str(space), "--trials", "1"],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    events = folder / "trial-0000" / "events.log"
    try:
        deadline = time.monotonic() + 240
        while not (events.exists() and "fit start" in events.read_text()):  # the trial is training
            assert worker.poll() is None, worker.stderr.read().decode()
            assert time.monotonic() < deadline, "the first trial never started"
            time.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait()
    assert worker.returncode == -signal.SIGKILL
    assert _study(folder, "kill-tune").trials[0].state == optuna.trial.TrialState.RUNNING

    result = api.tune(None, space, overrides, trials=1)  # the same study started again
    trials = _study(folder, "kill-tune").trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"] and result.finished == 1
    assert trials[1].params == trials[0].params  # the lost trial is run once more with its parameters
    assert_mentions(result.report.read_text(), "stopped sending heartbeats; run again as trial 1")


def test_a_storage_that_cannot_be_used_is_a_clear_error_before_any_trial(tmp_path, linear):
    space = _write(tmp_path / "space.yaml", "train.lr: [0.01, 0.1]\n")
    # without psycopg (postgresql:// in SQLAlchemy 2.1; the dev extra has it) the driver is what is missing
    refused = "driver is not installed" if importlib.util.find_spec("psycopg") is None else "cannot be used"
    for bad, fragment in [
        ("postgresql://nobody@127.0.0.1:1/x", refused),
        (f"sqlite:///{tmp_path}/no/such/folder/study.db", "does not exist"),
        ("runs/study.db", "not a database URL"),
        ("nosuchdb://host/x", "cannot be used"),
    ]:
        with pytest.raises(UserError) as info:
            api.tune(None, space, linear(), storage=bad)
        assert_mentions(str(info.value), bad, fragment)
    assert not (tmp_path / "runs" / "lin-tune").exists()  # refused before any trial or folder


def test_a_recipe_tune_section_is_validated(tmp_path, linear):
    with pytest.raises(ConfigError, match="tune.sampler"):
        api.tune(None, _write(tmp_path / "s.yaml", "train.lr: [0.01, 0.1]\n"), linear(), sampler="bayes")
    with pytest.raises(ConfigError, match="no search space"):
        api.tune(None, None, linear())


def test_tune_settings_are_not_a_changed_recipe_when_a_run_resumes(tmp_path):
    from modelcycle.runs import config_changes

    load_config(None, ["tune.trials=5"]).save(tmp_path / "config.yaml")
    assert config_changes(tmp_path, load_config(None, ["tune.trials=50", "tune.sampler=random"])) == []
    assert config_changes(tmp_path, load_config(None, ["tune.trials=5", "train.lr=0.5"])) == ["train.lr: 0.001 -> 0.5"]


def test_modelcycle_tune_stays_the_function_once_the_search_modules_are_loaded():
    import modelcycle
    import modelcycle.tuning.search  # noqa: F401  (a subpackage import sets an attribute on modelcycle)

    assert modelcycle.tune is api.tune
