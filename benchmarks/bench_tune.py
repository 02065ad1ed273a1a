"""Hyperparameter search on digits: TPE against random search on the same space and budget, and
the epochs the median pruner saves.

Every trial trains configs/digits.yaml (simple_cnn) at 8x8 pixels for a few epochs, with the
learning rate, weight decay, width and dropout drawn from one space in which the choice matters
(an AdamW learning rate from 1e-4 to 0.3 spans no learning at all to divergence). Three studies
with the same budget run one after the other:

- TPE (no pruning), and random search (no pruning): the best validation accuracy each finds;
- random search with the median pruner. A random sampler ignores the results, so with the same
  seed it draws the very same configurations as the unpruned random study: the two differ only
  by pruning, and the epochs they ran compare like for like.

TPE's random startup trials are the random study's first trials (same seed), so the two part
ways only where TPE starts to use its model. One seed per study: the TPE-vs-random figure is one
draw, not an average (see --seed).

Targets: TPE's best >= random's best; pruning saves >= 25 % of the epochs and still finds the
unpruned study's best value (the best configuration is not pruned).
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna

import common
from modelcycle import tune  # the first use imports torch
from modelcycle.tuning.report import pruning_savings

SPACE = """\
train.lr: {type: float, low: 1.0e-4, high: 0.3, log: true}
train.weight_decay: {type: float, low: 1.0e-6, high: 0.1, log: true}
model.args.width: {type: int, low: 4, high: 32, step: 4}
model.args.dropout: {type: float, low: 0.0, high: 0.5}
"""


def study(root: Path, name: str, sampler: str, pruner: str, args) -> dict:
    overrides = [
        f"data.root={root / 'data'}",
        f"run.dir={root / 'runs'}",
        "data.image_size=8",
        "data.workers=0",
        "train.warmup_epochs=0",
        f"train.epochs={args.epochs}",
        f"tune.seed={args.seed}",
        f"tune.startup_trials={args.startup_trials}",
        f"tune.prune_startup_trials={args.prune_startup_trials}",
    ]
    common.console.print(f"study {name}: {sampler}, pruner {pruner}, {args.trials} trials ...", style="dim")
    start = time.perf_counter()
    result = tune(
        common.REPO / "configs" / "digits.yaml",
        root / "space.yaml",
        overrides,
        trials=args.trials,
        sampler=sampler,
        pruner=pruner,
        study=name,
    )
    wall = time.perf_counter() - start
    trials = optuna.load_study(study_name=result.study, storage=result.storage).trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(done, key=lambda t: t.value) if done else None
    return {
        "best": best.value if best else float("nan"),
        "found_at": best.number if best else "-",
        "mean_last": sum(t.value for t in done[-5:]) / max(len(done[-5:]), 1),
        "params": {t.number: t.params for t in trials},
        "savings": pruning_savings(trials),
        "wall": wall,
    }


def main() -> None:
    parser = common.make_parser(
        __doc__.split("\n\n")[0],
        "smoke run (~1 min on an idle machine): 6 trials of 2 epochs per study, pruning from the third",
    )
    parser.add_argument("--trials", type=int, default=20, help="trials per study (the same budget for each)")
    parser.add_argument("--epochs", type=int, default=5, help="train.epochs of every trial")
    parser.add_argument("--startup-trials", type=int, default=5, help="TPE's random trials before its model")
    parser.add_argument("--prune-startup-trials", type=int, default=5, help="finished trials before any is pruned")
    parser.add_argument("--seed", type=int, default=0, help="tune.seed of every study")
    args = parser.parse_args()
    common.quick_default(args, "trials", 6)
    common.quick_default(args, "epochs", 2)
    common.quick_default(args, "startup_trials", 3)
    common.quick_default(args, "prune_startup_trials", 2)

    threads = common.set_threads(args.threads)
    common.console.print(common.environment_line(threads), style="dim")
    with common.temp_dir("tune", args.workdir, args.keep) as tmp:
        common.digits_data(tmp)
        # one short run first, so that first-use costs (lazy imports) land in no study's wall time
        common.train_on_digits(tmp, "warm-up", ["data.image_size=8", "data.workers=0", "train.epochs=1"])
        (tmp / "space.yaml").write_text(SPACE)
        tpe = study(tmp, "tpe", "tpe", "none", args)
        rnd = study(tmp, "random", "random", "none", args)
        pruned = study(tmp, "random-pruned", "random", "median", args)

    common.print_table(
        f"Search on digits 8 px, {args.trials} trials of {args.epochs} epochs each (seed {args.seed})",
        ["sampler", "best val accuracy", "found at trial", "mean of last 5", "wall s"],
        [
            [f"TPE ({args.startup_trials} random first)", tpe["best"], tpe["found_at"], tpe["mean_last"], tpe["wall"]],
            ["random", rnd["best"], rnd["found_at"], rnd["mean_last"], rnd["wall"]],
            [
                "TPE - random",
                f"{tpe['best'] - rnd['best']:+.2%}",
                "-",
                f"{tpe['mean_last'] - rnd['mean_last']:+.2%}",
                "-",
            ],
        ],
        note="val accuracy: each trial's best epoch on the 359 validation images (0.28 % per image).",
    )
    epochs_without = rnd["savings"]["total"]
    epochs_with = pruned["savings"]["total"]
    same = pruned["params"] == rnd["params"]
    common.print_table(
        "Median pruner: the same random configurations with and without pruning",
        ["study", "epochs run", "trials pruned", "best val accuracy", "wall s"],
        [
            ["random, no pruning", epochs_without, 0, rnd["best"], rnd["wall"]],
            ["random, median pruner", epochs_with, pruned["savings"]["pruned"], pruned["best"], pruned["wall"]],
            [
                "saved",
                f"{epochs_without - epochs_with} ({1 - common.ratio(epochs_with, epochs_without):.0%})",
                "-",
                "-",
                f"{1 - common.ratio(pruned['wall'], rnd['wall']):.0%}",
            ],
        ],
        note=f"identical configurations drawn in both studies: {'yes' if same else 'NO (the comparison is off)'}; "
        f"the median pruner starts after {args.prune_startup_trials} finished trials (tune.prune_startup_trials).",
    )
    common.verdict(
        tpe["best"] >= rnd["best"],
        f"TPE's best {tpe['best']:.2%} vs random search's {rnd['best']:.2%} in {args.trials} trials",
    )
    saved = 1 - common.ratio(epochs_with, epochs_without)
    common.verdict(
        saved >= 0.25 and pruned["best"] >= rnd["best"],
        f"pruning ran {epochs_with} of {epochs_without} epochs ({saved:.0%} saved); best {pruned['best']:.2%} "
        f"vs {rnd['best']:.2%} without pruning",
    )


if __name__ == "__main__":
    main()
