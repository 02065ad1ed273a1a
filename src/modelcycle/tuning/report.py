"""The study report in RUN_DIR/STUDY/: study.md, history.png, importance.png and best.yaml.

It is written from the storage's record alone, so any machine of a shared study can write it,
and it is rewritten at the end of every session (also an interrupted one).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.study import StudyDirection  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from modelcycle.config import Config  # noqa: E402
from modelcycle.tuning.space import SearchSpace, apply  # noqa: E402
from modelcycle.tuning.study import Tally, best_trials  # noqa: E402


def write(
    trials: list[FrozenTrial],
    direction: StudyDirection,
    folder: Path,
    config: Config,
    space: SearchSpace,
    storage: str,
    budget: int,
) -> Path:
    """Write the four files; returns the path of study.md."""
    folder.mkdir(parents=True, exist_ok=True)
    monitor = config.train.monitor
    best = next(iter(best_trials(trials, direction, 1)), None)
    best_yaml = folder / "best.yaml"
    if best is not None:
        # trains as RUN_DIR/STUDY-best, beside the study rather than inside it
        apply(config, best.params, run__name=f"{folder.name}-best").save(best_yaml)
    plot_history(trials, direction, monitor, folder / "history.png")
    importance = plot_importance(trials, direction, folder / "importance.png")
    lines = [
        f"# Study {folder.name}",
        "",
        f"- objective: {direction.name.lower()} {monitor} (each trial's best epoch)",
        f"- storage: `{storage}`; search space: `{space.path}`",
        f"- sampler {config.tune.sampler}, pruner {config.tune.pruner}",
        f"- trials: {_states(trials)}; {Tally.of(trials).finished} of {budget} count as finished",
        f"- pruning: {pruning_savings(trials)['text']}",
    ]
    if best is not None:
        lines += [
            f"- best: trial {best.number}, {monitor} = {best.value:.4f}, run `{best.user_attrs.get('run', '-')}`",
            "",
            "## Best parameters",
            "",
            "| key | value |",
            "|---|---|",
            *[f"| `{k}` | {_fmt(v)} |" for k, v in best.params.items()],
            "",
            f"`modelcycle train {best_yaml}` trains it again (the whole recipe with these values) "
            f"as `{config.run.dir}/{folder.name}-best`.",
        ]
    else:
        lines += ["", "No trial has completed yet, so there is no best configuration (best.yaml)."]
    lines += ["", "## Trials", "", *_trial_table(trials, space.keys, best), ""]
    lines += ["## Plots", "", f"![{monitor} per trial](history.png)", "", "![parameter importance](importance.png)"]
    if importance:
        lines += ["", f"Parameter importance: {importance}"]
    path = folder / "study.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def pruning_savings(trials: list[FrozenTrial]) -> dict:
    """Epochs the pruned trials would have run without pruning, minus those they ran."""
    pruned = [t for t in trials if t.state == TrialState.PRUNED and "epochs_planned" in t.user_attrs]
    planned = sum(t.user_attrs["epochs_planned"] for t in pruned)
    ran = sum(t.user_attrs.get("epochs_run", 0) for t in pruned)
    total = sum(t.user_attrs.get("epochs_run", 0) for t in trials)
    text = (
        f"{len(pruned)} trial{'s' * (len(pruned) != 1)} pruned; they ran {ran} of their {planned} epochs, "
        f"{planned - ran} epochs saved ({total} epochs run by the whole study)"
        if pruned
        else "no trial was pruned"
    )
    return {"pruned": len(pruned), "planned": planned, "ran": ran, "saved": planned - ran, "total": total, "text": text}


def _states(trials: list[FrozenTrial]) -> str:
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    return ", ".join(f"{n} {name}" for name, n in counts.items() if n) or "none yet"


def _trial_table(trials: list[FrozenTrial], keys: list[str], best: FrozenTrial | None) -> list[str]:
    retried_as = {t.system_attrs["failed_trial"]: t.number for t in trials if "failed_trial" in t.system_attrs}
    header = ["trial", "state", "value", *[f"`{k}`" for k in keys], "epochs", "seconds", "note"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in trials:
        number = f"**{t.number} (best)**" if best is not None and t.number == best.number else str(t.number)
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        epochs = f"{t.user_attrs.get('epochs_run', '-')}/{t.user_attrs.get('epochs_planned', '-')}"
        cells = [number, t.state.name, _fmt(t.value), *[_fmt(t.params.get(k)) for k in keys], epochs, _fmt(seconds)]
        rows.append("| " + " | ".join([*cells, _note(t, retried_as)]) + " |")
    return rows


def _note(trial: FrozenTrial, retried_as: dict[int, int]) -> str:
    if "error" in trial.user_attrs:
        note = trial.user_attrs["error"]
    elif trial.state == TrialState.FAIL:
        note = "interrupted" if trial.user_attrs.get("interrupted") else "its worker stopped sending heartbeats"
        if trial.number in retried_as:
            note += f"; run again as trial {retried_as[trial.number]}"
    elif trial.state == TrialState.PRUNED:
        note = f"pruned after epoch {trial.user_attrs.get('epochs_run', '?')}"
    else:
        note = ""
    note = " ".join(note.split()).replace("|", "/")
    return note[:157] + "..." if len(note) > 160 else note


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot_history(trials: list[FrozenTrial], direction: StudyDirection, monitor: str, path: Path) -> None:
    """The objective of each trial in order, pruned ones at their last reported value, and the best so far."""
    fig, ax = plt.subplots(figsize=(7, 4))
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    ax.plot([t.number for t in done], [t.value for t in done], "o", color="tab:blue", label="completed")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.plot([t.number for t in pruned], last, "x", color="grey", label="pruned (last epoch reported)")
    if done:
        pick = max if direction == StudyDirection.MAXIMIZE else min
        running = [pick(t.value for t in done[: i + 1]) for i in range(len(done))]
        ax.step([t.number for t in done], running, where="post", color="tab:orange", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(monitor)
    ax.set_title(f"{monitor} per trial ({direction.name.lower()})")
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_importance(trials: list[FrozenTrial], direction: StudyDirection, path: Path) -> str:
    """fANOVA importances of the completed trials; with too few, the figure says so. Returns a
    sentence for study.md when the figure holds no bars."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    importances: dict[str, float] = {}
    reason = ""
    if len(done) < 2:
        reason = f"needs at least 2 completed trials (the study has {len(done)})"
    else:
        study = optuna.create_study(direction=direction)  # in memory: the evaluator wants a Study
        study.add_trials(done)
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except (RuntimeError, ValueError) as exc:  # e.g. every parameter took one value only
            reason = f"could not be computed: {exc}"
        if not importances and not reason:
            reason = "no parameter took more than one value in the completed trials"
    fig, ax = plt.subplots(figsize=(7, 0.5 * max(len(importances), 2) + 1.5))
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (fANOVA, share of the objective's variance)")
        ax.set_title(f"parameter importance over {len(done)} completed trials")
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, f"parameter importance {reason}", ha="center", va="center", wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return reason
