"""`modelcycle runs` and `compare` over runs of several tasks: one table per task, each ranked by
that task's own metric (a classifier's val_loss and a language model's are not one quantity),
`--task` to pick one, compare refusing a mix; each run named by the model it really trained.

The runs are the suite's session runs (tests/conftest.py), linked into one folder: an image
classifier (`trained`), an SFT policy built from scratch (`sft_policy`) and a reward model
started from it by model.init_from (`reward_run`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import assert_mentions, assert_user_error, run_cli
from modelcycle.errors import UserError
from modelcycle.tasks.registry import task_view
from modelcycle.track.compare import compare
from modelcycle.track.listing import RunSummary, TaskView, group_metric, group_runs, list_runs
from modelcycle.track.status import Status


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, trained: Path, sft_policy: Path, reward_run) -> Path:
    """runs/shapes (classify), runs/sft (sft), runs/reward (reward): links to the session's runs."""
    root = tmp_path_factory.mktemp("mixed") / "runs"
    root.mkdir()
    for name, run in (("shapes", trained), ("sft", sft_policy.parent), ("reward", reward_run.path)):
        (root / name).symlink_to(run, target_is_directory=True)
    return root


def test_each_task_is_ranked_apart_by_its_own_metric(mixed: Path):
    listing = list_runs(mixed, judge=task_view)
    groups = {g.task: g for g in listing.groups}
    assert set(groups) == {"classify", "sft", "reward"}
    assert {t: [s.name for s in g.runs] for t, g in groups.items()} == {
        "classify": ["shapes"],
        "sft": ["sft"],
        "reward": ["reward"],
    }
    assert (groups["classify"].metric, groups["classify"].mode) == ("val_accuracy", "max")
    assert (groups["reward"].metric, groups["reward"].mode) == ("val_accuracy", "max")
    assert groups["reward"].columns == ("val_margin", "val_loss")  # the task's summary metrics, not a classifier's
    assert groups["sft"].metric == "train_loss"  # what the run monitors: it has no held-out set
    assert groups["sft"].columns == ()  # val_loss and val_perplexity: never logged without lm.val_files


def test_each_run_names_the_model_it_trained(mixed: Path):
    runs = {s.name: s for s in list_runs(mixed, judge=task_view).runs}
    assert runs["shapes"].model == "simple_cnn"
    assert runs["sft"].model == "llama"
    assert runs["reward"].architecture["architectures"] == ["LlamaForSequenceClassification"]
    assert runs["reward"].model == "llama"  # a score head on the SFT policy's Llama, not the image default
    # config.yaml names no model the run did not use: the reward run's came from model.init_from
    saved = yaml.safe_load((mixed / "reward" / "config.yaml").read_text())
    assert saved["model"]["name"] is None and saved["model"]["init_from"]
    status = json.loads((mixed / "reward" / "status.json").read_text())
    assert status["model"]["model_type"] == "llama" and status["state"] == "finished"


def test_task_picks_one_task(mixed: Path):
    listing = list_runs(mixed, task="reward", judge=task_view)
    assert [(g.task, [s.name for s in g.runs]) for g in listing.groups] == [("reward", ["reward"])]
    with pytest.raises(UserError, match=r"no run of task 'dpo'.*classify \(1 run\), reward \(1 run\), sft \(1 run\)"):
        list_runs(mixed, task="dpo", judge=task_view)


def test_cli_prints_one_table_per_task(mixed: Path):
    table = run_cli("runs", mixed)
    assert table.returncode == 0, table.stderr
    assert_mentions(table.stderr, "task classify, 1 run", "task reward, 1 run", "task sft, 1 run")
    assert_mentions(table.stderr, "best = highest val_accuracy", "best = lowest train_loss", "val_margin")
    rows = json.loads(run_cli("runs", mixed, "--task", "reward", "--json").stdout)
    assert [(r["run"], r["task"], r["metric"], r["model"]) for r in rows] == [
        ("reward", "reward", "val_accuracy", "llama")
    ]
    assert rows[0]["architecture"]["architectures"] == ["LlamaForSequenceClassification"]
    assert_user_error(run_cli("runs", mixed, "--task", "dpo"), "no run of task 'dpo'", "reward (1 run)")


def test_compare_refuses_runs_of_different_tasks(mixed: Path, tmp_path: Path):
    with pytest.raises(UserError, match=r"2 different tasks.*classify: .*shapes; reward: .*reward.*--task"):
        compare([mixed / "shapes", mixed / "reward"], out=tmp_path / "c.png", judge=task_view)
    alone = compare([mixed], out=tmp_path / "c.png", task="reward", judge=task_view)
    assert [s.name for s in alone.runs] == [str(mixed / "reward")] and alone.metric == "val_accuracy"
    assert alone.group.columns == ("val_margin", "val_loss")
    result = run_cli("compare", mixed / "shapes", mixed / "sft", cwd=tmp_path)
    assert_user_error(result, "different tasks", "classify", "sft", "--task")
    ok = run_cli("compare", mixed, "--task", "sft", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert_mentions(ok.stderr, "task sft, 1 run", "best = lowest train_loss")


def test_a_run_made_before_status_json_named_its_model_reads_its_package(trained: Path, tmp_path: Path):
    old = tmp_path / "runs" / "old"
    (old / "model").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", "events.log", "model/modelcycle.json"):
        shutil.copy(trained / name, old / name)
    (old / "status.json").write_text(json.dumps({"state": "finished", "since": "2026-01-01T00:00:00"}))
    (summary,) = list_runs(tmp_path / "runs").runs
    assert summary.model == "simple_cnn" and summary.architecture["name"] == "simple_cnn"


def _summary(name: str, task: str, rows: list[dict], **config) -> RunSummary:
    return RunSummary(Path(name), name, Status("finished"), config={"run.task": task, **config}, rows=rows)


def test_a_distilled_student_is_ranked_with_the_classifiers():
    """A distill run's package is an image classifier: it sits in classify's table, next to the
    baseline it should beat; --task distill still picks distill's runs alone."""
    runs = [_summary("base", "classify", []), _summary("student", "distill", [])]
    groups = group_runs(runs, task_view)
    assert [(g, [s.name for s in members]) for g, members, _ in groups] == [("classify", ["base", "student"])]
    assert [s.name for _, members, _ in group_runs(runs, task_view, "distill") for s in members] == ["student"]
    assert [s.name for _, members, _ in group_runs(runs, task_view, "classify") for s in members] == ["base", "student"]


def test_a_loop_without_epochs_is_judged_on_its_iterations():
    """PPO logs one row per iteration and monitors nothing of its own: its runs rank by the
    task's first summary metric (reward), at the iteration where it was best."""
    rows = [{"step": i, "iteration": i, "reward": r, "kl": 0.1 * i} for i, r in ((1, 0.2), (2, 0.9), (3, 0.5))]
    run = _summary("ppo", "ppo", rows, **{"train.monitor": "val_accuracy", "train.epochs": 10})
    assert group_metric([run], None, TaskView("ppo", ("reward", "kl"))) == ("reward", "max")
    best, at = run.best("reward", "max")
    assert best == 0.9 and run.to_json("reward", "max")["best_epoch"] == 2
    assert run.to_json("reward", "max")["at_best"] == {"reward": 0.9, "kl": pytest.approx(0.2)}
    assert run.planned is None  # train.epochs is not what an iteration loop counts
