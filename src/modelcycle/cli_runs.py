"""Verbs over many runs: list them, compare them, cross-validate a recipe, tune one (registered on
the main app by cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from modelcycle.cli_common import OVERRIDES_HELP, split_config
from modelcycle.progress import console, info


def list_runs(
    folder: Path = typer.Argument(
        Path("runs"),
        help="Folder of run folders (run.dir). Runs nested below (study trials, crossval folds) count too.",
    ),
    sort: str | None = typer.Option(
        None,
        help="Rank by this metric (val_loss, train_loss, val_top5...; a loss lowest first), or by 'date' (newest "
        "first) or 'name'. Default: each task's own metric (the metric its runs monitor, train.monitor, in its "
        "train.monitor_mode; else the task's first summary metric).",
    ),
    task: str | None = typer.Option(
        None, "--task", help="Only the runs of this task (run.task; classify takes distill's runs too)."
    ),
    show_all: bool = typer.Option(False, "--all", help="Also list the folders that hold no run."),
    as_json: bool = typer.Option(False, "--json", help="Print the runs as one JSON list (for scripts)."),
):
    """Tables of the runs under FOLDER, one per task, each best first by that task's metric: best value and its
    epoch, the model (its real architecture), status (finished, interrupted, failed, running), epochs, start,
    duration, and the settings that differ between the task's runs."""
    from modelcycle.tasks.registry import task_view
    from modelcycle.track.listing import list_runs as find
    from modelcycle.track.tables import others_table, runs_table

    listing = find(folder, sort=sort, task=task, judge=task_view)
    if as_json:
        rows = [s.to_json(g.metric, g.mode) for g in listing.groups for s in g.runs]
        rows += [{"run": p.relative_to(folder).as_posix(), "status": "not a run"} for p in listing.others if show_all]
        print(json.dumps(rows))
        return
    if not listing.runs:
        info(f"no runs in {folder}/; `modelcycle train CONFIG` writes one (run.dir={folder})")
    order = "newest first" if sort == "date" else "by name" if sort == "name" else "best first"
    for group in listing.groups:
        what = f"task {group.task}" if group.task else "runs whose config.yaml cannot be read"
        console.print(runs_table(group, f"{folder}: {what}, {_count(group.runs)}, {order}"))
    if listing.others and show_all:
        console.print(others_table(listing.others, folder))
    elif listing.others:
        names = ", ".join(p.relative_to(folder).as_posix() for p in listing.others)
        info(f"{len(listing.others)} folder(s) hold no run and are not listed (--all lists them): {names}")


def _count(runs: list) -> str:
    return f"{len(runs)} run{'s' if len(runs) != 1 else ''}"


def compare(
    runs: list[Path] = typer.Argument(
        ..., help="Run folders (runs/a runs/b ...); a folder of runs stands for all of them."
    ),
    metric: str | None = typer.Option(
        None,
        help="Metric for the third plot and the 'best' column (default: the metric the runs monitor, else their "
        "task's first summary metric).",
    ),
    task: str | None = typer.Option(
        None, "--task", help="Only the runs of this task (when a folder of runs holds several tasks)."
    ),
    out: Path = typer.Option(Path("compare.png"), "--out", help="PNG to write."),
    as_json: bool = typer.Option(False, "--json", help="Print the runs' figures as JSON instead of a table."),
):
    """Plot the runs' train loss, val loss, val accuracy (or --metric) and learning rate against the epoch
    in one PNG, and print their best and last figures with the settings that differ. The runs must be of one
    task: runs of different tasks are refused (--task picks one), as their metrics do not compare."""
    from modelcycle.tasks.registry import task_view
    from modelcycle.track.compare import compare as run_compare
    from modelcycle.track.tables import runs_table

    result = run_compare(runs, out=out, metric=metric, task=task, judge=task_view)
    if as_json:
        print(json.dumps([s.to_json(result.metric, result.mode) for s in result.runs]))
    else:
        what = f"task {result.group.task}, " if result.group.task else ""
        console.print(runs_table(result.group, f"{what}{_count(result.runs)}", final=True))
    info(f"curves: {result.png}")


def crossval(
    config: str = typer.Argument(..., help="YAML recipe."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    folds: int = typer.Option(5, help="Number of stratified folds."),
):
    """k-fold cross-validation over train+val; prints mean and std of each metric."""
    from modelcycle.api import crossval as run_crossval
    from modelcycle.evaluation.metrics import top5_label

    path, overrides = split_config(config, overrides)
    summary = run_crossval(path, overrides, folds=folds)
    names = {"top5": top5_label(summary["topk"], summary["num_classes"])}  # what top5 means with few classes
    table = Table(title=f"{folds}-fold cross-validation ({summary['runs']})")
    table.add_column("metric")
    for i in range(folds):
        table.add_column(f"fold {i}", justify="right")
    table.add_column("mean ± std", justify="right")
    for key, mean in summary["mean"].items():
        cells = [f"{f[key]:.4f}" for f in summary["per_fold"]]
        table.add_row(names.get(key, key), *cells, f"{mean:.4f} ± {summary['std'][key]:.4f}")
    console.print(table)


def tune(
    config: str = typer.Argument(..., help="YAML recipe (configs/digits.yaml) or a first key=value override."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    space: Path | None = typer.Option(
        None, help="Search space YAML: dotted config keys, each float/int/categorical (see configs/space.yaml)."
    ),
    trials: int | None = typer.Option(
        None, help="Finished trials the study should have (default 20); run again with more to extend it."
    ),
    sampler: str | None = typer.Option(None, help="tpe (default), random, or grid (every float range needs a step)."),
    pruner: str | None = typer.Option(
        None, help="median (default: stop trials behind the median at the same epoch), hyperband, or none."
    ),
    storage: str | None = typer.Option(
        None,
        help="Database URL shared by the workers (default sqlite:///RUN_DIR/STUDY/study.db); on several machines "
        "a server, e.g. postgresql://user:password@host:5432/optuna.",
    ),
    workers: int | None = typer.Option(None, help="Processes on this machine working on the study (default 1)."),
    study: str | None = typer.Option(None, help="Study name (default RUN_NAME-tune); trials go to RUN_DIR/STUDY/."),
):
    """Search hyperparameters with Optuna; each trial is a run folder RUN_DIR/STUDY/trial-NNNN.

    The study is kept in a database, so the same command again continues it. RUN_DIR/STUDY/ gets
    study.md, history.png, importance.png and best.yaml (modelcycle train RUN_DIR/STUDY/best.yaml).
    Example: modelcycle tune configs/digits.yaml --space configs/space.yaml --trials 30 --workers 2
    """
    from modelcycle.api import tune as run_tune

    path, overrides = split_config(config, overrides)
    result = run_tune(
        path,
        space,
        overrides,
        trials=trials,
        sampler=sampler,
        pruner=pruner,
        storage=storage,
        workers=workers,
        study=study,
    )
    keys = list(result.top[0]["params"]) if result.top else []
    table = Table(title=f"study {result.study}: best trials ({result.direction} {result.monitor})")
    for column in ("trial", result.monitor, *keys, "epochs", "run"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in result.top:
        params = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in (row["params"].get(k) for k in keys)]
        table.add_row(str(row["number"]), f"{row['value']:.4f}", *params, str(row["epochs"]), str(row["run"]))
    if result.top:
        console.print(table)
    best = f"; best config {result.folder / 'best.yaml'}" if result.top else ""
    info(f"{result.finished} trials finished; report {result.report}{best}")
