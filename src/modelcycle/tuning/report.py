"""The study report in RUN_DIR/STUDY/: study.md, history.png, importance.png and best.yaml.

It is written from the storage's record alone, so any machine of a shared study can write it,
and it is rewritten at the end of every session (also an interrupted one).
"""

from __future__ import annotations

from pathlib import Path

import optuna
from matplotlib.figure import Figure
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from modelcycle.config import Config
from modelcycle.evaluation.plots import label, mark_best, new_figure, save, say
from modelcycle.tuning.space import SearchSpace, apply
from modelcycle.tuning.study import Tally, best_trials

# fANOVA fits a random forest to (parameters -> objective): with fewer trials than this per
# parameter, or fewer than MIN_TRIALS in all, its shares describe noise, not the parameters
MIN_TRIALS, TRIALS_PER_PARAMETER = 5, 2


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
    _, importance = plot_importance(trials, direction, folder / "importance.png")
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


def plot_history(trials: list[FrozenTrial], direction: StudyDirection, monitor: str, path: Path) -> Figure:
    """The objective of each trial in order, pruned ones at their last reported value, the best so far
    and the best trial starred."""
    fig, axes = new_figure(7, 4)
    ax = axes[0, 0]
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
        best = pick(done, key=lambda t: t.value)
        mark_best(ax, best.number, best.value, f"best: trial {best.number} ({best.value:.4g})")
    label(ax, f"{monitor} per trial ({direction.name.lower()})", "trial", monitor, integer_x=True)
    if done or pruned:
        ax.legend(loc="best", fontsize=8)
    else:
        say(ax, "no trial has reported a value yet")
    return save(fig, path)


def importance_reason(done: list[FrozenTrial]) -> str:
    """Why the completed trials are too few to judge parameter importance by; "" when they are not."""
    varied = sorted({k for t in done for k in t.params if len({repr(u.params.get(k)) for u in done}) > 1})
    if len(varied) < 2:
        which = f"only {varied[0]} varied" if varied else "no parameter took more than one value"
        return (
            f"too little to judge: {which} in the {len(done)} completed trials, and importance is a share "
            "between parameters (one parameter always gets 1.0); history.png shows its effect"
        )
    needed = max(MIN_TRIALS, TRIALS_PER_PARAMETER * len(varied))
    if len(done) < needed:
        return (
            f"too little to judge: {len(done)} completed trials for {len(varied)} parameters "
            f"(at least {needed} are needed before the shares say more than noise)"
        )
    return ""


def plot_importance(trials: list[FrozenTrial], direction: StudyDirection, path: Path) -> tuple[Figure, str]:
    """fANOVA importances of the completed trials; when they are too few (or one parameter alone
    varied) the figure says so in words. Returns the figure and that sentence ("" with bars)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    importances: dict[str, float] = {}
    reason = importance_reason(done)
    if not reason:
        study = optuna.create_study(direction=direction)  # in memory: the evaluator wants a Study
        study.add_trials(done)
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except (RuntimeError, ValueError) as exc:
            reason = f"could not be computed: {exc}"
    fig, axes = new_figure(7, 0.5 * max(len(importances), 2) + 1.5)
    ax = axes[0, 0]
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        title = f"parameter importance over {len(done)} completed trials"
        label(ax, title, "share of the objective's variance (fANOVA)", "parameter")
    else:
        ax.set_title("parameter importance")
        say(ax, f"{reason[0].upper()}{reason[1:]}.", width=70)
    return save(fig, path), reason
