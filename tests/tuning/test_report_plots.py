"""The study's plots, from made trials (no training): whole-number trial ticks, labels, the best trial
starred, and importance.png saying in words when the trials are too few to judge by."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState, create_trial

from modelcycle.evaluation.plots import BEST
from modelcycle.tuning.report import plot_history, plot_importance

LR = FloatDistribution(1e-4, 1e-1, log=True)
OPTIMIZER = CategoricalDistribution(["adamw", "sgd"])


def trials(params: list[dict], values: list[float]) -> list[FrozenTrial]:
    made = []
    for number, (p, value) in enumerate(zip(params, values, strict=True)):
        distributions = {"train.lr": LR, "train.optimizer": OPTIMIZER}
        trial = create_trial(
            params=p, distributions={k: distributions[k] for k in p}, value=value, state=TrialState.COMPLETE
        )
        trial.number = number
        made.append(trial)
    return made


def texts(fig) -> str:
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts).replace("\n", " ")


@pytest.mark.parametrize(("direction", "best"), [(StudyDirection.MAXIMIZE, 2), (StudyDirection.MINIMIZE, 4)])
def test_history_has_whole_trial_ticks_labels_and_the_best_trial_starred(tmp_path: Path, direction, best):
    values = [0.5, 0.6, 0.9, 0.7, 0.3, 0.8, 0.85]
    fig = plot_history(trials([{"train.lr": 0.01}] * 7, values), direction, "val_accuracy", tmp_path / "history.png")
    assert (tmp_path / "history.png").stat().st_size > 0
    (ax,) = fig.axes
    assert ax.get_title() and ax.get_xlabel() == "trial" and ax.get_ylabel() == "val_accuracy"
    fig.canvas.draw()
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    (star,) = [line for line in ax.get_lines() if line.get_gid() == BEST]
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (best, values[best])
    assert star.get_label() == f"best: trial {best} ({values[best]:.4g})"


def test_importance_of_a_single_parameter_says_there_is_too_little_to_judge(tmp_path: Path):
    """fANOVA gives one parameter a share of 1.0 however little it mattered: no bar, a sentence."""
    rng = np.random.default_rng(0)
    made = trials([{"train.lr": float(lr)} for lr in 10 ** rng.uniform(-4, -1, 12)], list(rng.uniform(0, 1, 12)))
    fig, reason = plot_importance(made, StudyDirection.MAXIMIZE, tmp_path / "importance.png")
    assert (tmp_path / "importance.png").stat().st_size > 0
    assert reason.startswith("too little to judge") and "only train.lr varied" in reason
    assert "too little to judge" in texts(fig).lower() and "only train.lr varied" in texts(fig)
    assert not fig.axes[0].patches  # no bar


def test_importance_with_too_few_trials_says_so_and_with_enough_draws_bars(tmp_path: Path):
    rng = np.random.default_rng(0)
    params = [
        {"train.lr": float(10 ** rng.uniform(-4, -1)), "train.optimizer": ["adamw", "sgd"][i % 2]} for i in range(12)
    ]
    values = [p["train.lr"] * 10 + (p["train.optimizer"] == "sgd") * 0.01 for p in params]
    fig, reason = plot_importance(trials(params[:3], values[:3]), StudyDirection.MAXIMIZE, tmp_path / "few.png")
    assert "3 completed trials for 2 parameters" in reason and "at least 5" in reason
    assert "3 completed trials for 2 parameters" in texts(fig)
    fig, reason = plot_importance(trials(params, values), StudyDirection.MAXIMIZE, tmp_path / "many.png")
    (ax,) = fig.axes
    assert reason == "" and len(ax.patches) == 2
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    bars = {label.get_text(): bar.get_width() for label, bar in zip(ax.get_yticklabels(), ax.patches, strict=True)}
    assert bars["train.lr"] > bars["train.optimizer"]  # the objective is mostly lr
