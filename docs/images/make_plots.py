"""Draw the report plots shown in the docs from made-up but typical inputs (no training needed):
``python docs/images/make_plots.py [OUT]`` writes report-*.png, tune-*.png and monitor-drift.png
into OUT (default: this folder), through the same functions reports use, as 256-colour PNGs."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial
from PIL import Image
from sklearn.datasets import load_digits

from modelcycle.evaluation import report
from modelcycle.monitor import report as monitor_report
from modelcycle.monitor.drift import Thresholds, bin_edges, score_window, shares
from modelcycle.tuning import report as tune_report


def curves(out: Path) -> None:
    epochs = [
        {
            "epoch": e,
            "train_loss": 2.0 * 0.7**e + 0.05,
            "val_loss": 2.0 * 0.72**e + 0.12 + 0.01 * max(0, e - 8) ** 1.5,
            "train_accuracy": 1 - 0.8 * 0.65**e,
            "val_accuracy": 0.95 - 0.8 * 0.62**e - 0.004 * max(0, e - 8) ** 1.5,
            "epoch_time_s": 1.0,
        }
        for e in range(1, 13)
    ]
    report.plot_curves(epochs, out / "report-curves.png")


def mistakes(out: Path) -> None:
    digits = load_digits()
    rng = np.random.default_rng(0)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    names[7] = "seven (European, crossed)"  # a long class name
    folder = out / "_digits"
    folder.mkdir(exist_ok=True)
    items = []
    for n, i in enumerate(rng.choice(len(digits.images), 12, replace=False)):
        path = folder / f"{n}.png"
        Image.fromarray((digits.images[i] * 15).astype(np.uint8)).resize((32, 32)).save(path)
        true = int(digits.target[i])
        items.append((path, names[true], names[(true + 1 + n % 3) % 10], float(0.95 - 0.05 * n)))
    report.plot_mistakes(items, 1, out / "report-mistakes.png")
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


def trials(values: list[tuple[float, float]]) -> list:
    start = datetime(2026, 1, 1)
    made = []
    for number, (lr, value) in enumerate(values):
        trial = create_trial(
            params={"train.lr": lr},
            distributions={"train.lr": FloatDistribution(1e-4, 1e-1, log=True)},
            value=value,
            state=TrialState.COMPLETE,
        )
        trial.number = number
        trial.datetime_start, trial.datetime_complete = start, start + timedelta(seconds=30)
        made.append(trial)
    return made


def tune(out: Path) -> None:
    rng = np.random.default_rng(0)
    lrs = 10 ** rng.uniform(-4, -1, 14)
    done = trials([(lr, 0.95 - 0.1 * abs(np.log10(lr) + 2.3) + rng.normal(0, 0.01)) for lr in lrs])
    tune_report.plot_history(done, StudyDirection.MAXIMIZE, "val_accuracy", out / "tune-history.png")
    tune_report.plot_importance(done, StudyDirection.MAXIMIZE, out / "tune-importance.png")


def monitor(out: Path) -> None:
    rng = np.random.default_rng(0)
    names = ("brightness", "contrast", "sharpness", "horizontal_edges", "size", "confidence")
    features = {}

    def draw(name: str, size: int, loc: float = 0.0) -> np.ndarray:
        if name == "confidence":  # a max-softmax: most near 1
            return 1 - rng.beta(1, 12, size)
        return rng.normal(loc=loc, size=size)

    for name in names:
        values = draw(name, 2000)
        edges = bin_edges(values)
        features[name] = {"mean": 0.0, "edges": edges.tolist(), "shares": shares(values, edges).tolist()}
        features[name]["sample"] = values
    ood = float(np.quantile(features["confidence"]["sample"], 0.05))
    profile = {"features": features, "class_shares": [0.5, 0.5], "ood": {"threshold": ood, "quantile": 0.05}}
    windows = []
    for index in range(8):
        drift = max(0, index - 4) * 0.25
        window = {n: draw(n, 200, drift if n == "brightness" else 0.0) for n in names}
        window["label"] = rng.integers(0, 2, 200)
        scored = score_window(profile, window, Thresholds())
        windows.append(
            {
                "index": index,
                "requests": 40 + index,
                "latency_p50_ms": 12.0 + rng.normal(),
                "latency_p99_ms": 30.0 + rng.normal(0, 3),
                "images": 200,
                "class_counts": np.bincount(window["label"], minlength=2).tolist(),
                **scored,
            }
        )
    monitor_report.plot_drift(windows, Thresholds(), out / "monitor-drift.png")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    target.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for draw in (curves, mistakes, tune, monitor):
        draw(target)
    for path in target.glob("*-*.png"):  # a palette of 256 colours: a third of the bytes, the same look
        with Image.open(path) as image:
            small = image.convert("RGB").quantize(256)
        small.save(path, optimize=True)
