"""Distillation on digits: a small student taught by a teacher run against the same student
trained from the labels alone.

The teacher is configs/digits.yaml as it is (simple_cnn width 32). Both students are simple_cnn
with a much smaller width (8 by default), built by ``modelcycle.distill`` from the teacher's
recipe, so they share everything (split, augmentation, epochs, schedule, batch size, seed)
except the loss: the scratch student is the very same config with ``distill.teacher`` unset,
trained by ``modelcycle.train``. Each student is trained once per seed (``train.seed``: the
initial weights and the batch order); accuracies on 359 validation images move by 0.28 % per
image, so one seed says little and the table gives each seed and the mean.

Target: the distilled student's mean validation accuracy >= the scratch student's.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import common
from modelcycle import distill, load_config, prepare, train, write_digits  # the first use imports torch
from modelcycle.runs import read_manifest
from modelcycle.tasks.distill import student_config


def measured(run_fn) -> dict:
    """Train, then read what the package says: (best-epoch) val accuracy, final-epoch accuracy,
    agreement with the teacher, parameters, training-loop and wall seconds."""
    start = time.perf_counter()
    run = run_fn()
    wall = time.perf_counter() - start
    manifest = read_manifest(run.model_dir)
    epochs = run.epoch_metrics()
    record = manifest.get("distillation", {})
    return {
        "run": run,
        "accuracy": manifest["metrics"].get("val_accuracy", float("nan")),
        "final": epochs[-1].get("val_accuracy", float("nan")) if epochs else float("nan"),
        "agreement": manifest["metrics"].get("val_agreement", float("nan")),
        "params": record.get("student_parameters"),
        "epochs_s": sum(m["epoch_time_s"] for m in epochs),
        "wall": wall,
    }


def table_row(label: str, r: dict, agreement: str = "-") -> list:
    return [label, r["params"], f"{r['accuracy']:.2%}", f"{r['final']:.2%}", agreement, r["epochs_s"], r["wall"]]


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "smoke run (~1 min): 3 epochs, 1 seed")
    parser.add_argument("--config", type=Path, default=common.REPO / "configs" / "digits.yaml")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs for all three (None: the recipe's)")
    parser.add_argument("--student-width", type=int, default=8, help="simple_cnn width of the students")
    parser.add_argument("--seeds", type=int, default=3, help="student seeds 0..N-1")
    parser.add_argument("--temperature", type=float, default=None, help="distill.temperature (None: default 4)")
    parser.add_argument("--alpha", type=float, default=None, help="distill.alpha (None: default 0.9)")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for all three runs")
    args = parser.parse_args()
    common.quick_default(args, "epochs", 3)
    common.quick_default(args, "seeds", 1)

    threads = common.set_threads(args.threads)
    common.console.print(common.environment_line(threads), style="dim")
    with common.temp_dir("distill", args.workdir, args.keep) as tmp:
        write_digits(tmp / "images")
        prepare(tmp / "images", tmp / "data", val=0.2, seed=0)
        shared = list(args.overrides) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
        teacher_cfg = load_config(
            args.config, [f"data.root={tmp / 'data'}", f"run.dir={tmp / 'runs'}", "run.name=teacher", *shared]
        )
        teacher = measured(lambda: train(teacher_cfg, progress=False))
        given = {"temperature": args.temperature, "alpha": args.alpha}
        knobs = [f"distill.{k}={v}" for k, v in given.items() if v is not None]
        scratch, distilled = [], []
        for seed in range(args.seeds):
            student = [f"model.args={{width: {args.student_width}}}", f"train.seed={seed}", *knobs, *shared]
            out = tmp / "runs" / f"distilled-{seed}"
            distilled.append(
                measured(
                    lambda out=out, student=student: distill(
                        teacher["run"].path, "simple_cnn", out, student, progress=False
                    )
                )
            )
            # the same resolved config, minus the teacher
            cfg = student_config(teacher["run"].path, "simple_cnn", tmp / "runs" / f"scratch-{seed}", student)
            cfg.distill.teacher = None
            scratch.append(measured(lambda cfg=cfg: train(cfg, progress=False)))
        record = read_manifest(distilled[0]["run"].model_dir)["distillation"]

    teacher["params"] = f"{record['teacher_parameters']:,}"
    for r in scratch + distilled:
        r["params"] = f"{record['student_parameters']:,}"
    width = teacher_cfg.model.args.get("width", "?")
    rows = [table_row(f"teacher {teacher_cfg.model.name} width {width}", teacher)]
    for seed, (s, d) in enumerate(zip(scratch, distilled, strict=True)):
        rows.append(table_row(f"student w{args.student_width} scratch, seed {seed}", s))
        rows.append(table_row(f"student w{args.student_width} distilled, seed {seed}", d, f"{d['agreement']:.2%}"))
    mean = {
        name: {k: statistics.mean(r[k] for r in runs) for k in ("accuracy", "final", "epochs_s", "wall")}
        for name, runs in (("scratch", scratch), ("distilled", distilled))
    }
    diff = {k: mean["distilled"][k] - mean["scratch"][k] for k in ("accuracy", "final")}
    time_ratio = {k: common.ratio(mean["distilled"][k], mean["scratch"][k]) for k in ("epochs_s", "wall")}
    rows.append(
        [
            "mean: distilled - scratch",
            "-",
            f"{diff['accuracy']:+.2%}",
            f"{diff['final']:+.2%}",
            "-",
            f"{time_ratio['epochs_s']:.2f}x",
            f"{time_ratio['wall']:.2f}x",
        ]
    )
    epochs = teacher_cfg.train.epochs
    common.print_table(
        f"Distillation on digits: T={record['temperature']:g}, alpha={record['alpha']:g}, {epochs} epochs each",
        ["run", "params", "val acc (package)", "val acc (final)", "agreement", "train s", "wall s"],
        rows,
        note=(
            "'package' is the best epoch by val_accuracy (what the model package holds); 'agreement' is the "
            "student's top-1 agreement with the teacher on the val split. 'train s' sums epoch_time_s (the "
            "distilled student also runs the teacher's forward pass); 'wall s' includes setup, validation and "
            "the package. The last row: accuracy differences of the means, time ratios distilled/scratch."
        ),
    )
    common.verdict(
        diff["accuracy"] >= 0,
        f"distilled student {mean['distilled']['accuracy']:.2%} vs scratch {mean['scratch']['accuracy']:.2%} "
        f"(mean of {args.seeds} seed(s), package accuracy), teacher {teacher['accuracy']:.2%}, "
        f"{record['teacher_parameters'] / record['student_parameters']:.1f}x fewer parameters",
    )


if __name__ == "__main__":
    main()
