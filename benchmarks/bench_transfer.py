"""Fine-tuning on digits: a backbone pretrained on digits 0-4, fine-tuned on a small slice of
digits 5-9, against the same model trained from scratch on that slice for the same epochs.

The source run is configs/digits.yaml (simple_cnn width 32, 16 px) on every training image of
digits 0-4. A slice is --per-class training images of each of 5-9, drawn per seed (several sizes,
so the table shows where pretraining stops mattering). Every run on a slice shares the recipe
(model, augmentation, optimizer, lr, schedule, epochs, batch size 16, seed) and differs only in
how it starts: from scratch (random weights), or ``model.init_from`` the source, fine-tuning
everything (the headline), or with part of it frozen: the usual recipe (head alone, then
everything from epoch 3, head at 10x lr), all_but_last:2, or a linear probe (only the head
trains, at 10x lr: at the recipe's lr a lone head barely moves in a few dozen steps). The classes
5-9 are new to the source, so its head is replaced and only the features carry over. All runs are
evaluated on the whole 5-9 validation split (179 images, 0.56 % each) after their last epoch.

Target, per slice size: the fine-tuned model's final accuracy beats scratch on every seed and on
the mean.

Second part (--part time), time to a fixed accuracy: resnet18 (torchvision's layout, small stem,
width 16 so that it runs in minutes on a busy laptop) pretrained on every training image of
digits 0-4, its weights saved as a plain state_dict file like torchvision's ImageNet ones, and a
small slice of 5-9 (--time-per-class a class) trained from scratch and from that file
(``model.weights``), same recipe and seed. Reported: the epoch, and the seconds of training and
validation since the start of the fit, at which each first reaches each of --targets validation
accuracy. Target: the run from the file gets there in fewer epochs on every seed.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import common
from modelcycle import load_config, prepare, train, write_digits  # the first use imports torch
from modelcycle.data.manifest import PreparedData
from modelcycle.engine.callbacks import Callback

STARTS = {  # row label -> overrides; "scratch" is the baseline, the second row the headline
    "scratch": [],
    "fine-tune (freeze=none)": ["model.freeze=none"],
    "backbone, unfreeze at 3, head lr x10": [
        "model.freeze=backbone",
        "train.unfreeze_at_epoch=3",
        "train.head_lr_mult=10",
    ],
    "all_but_last:2": ["model.freeze=all_but_last:2"],
    "linear probe (backbone), head lr x10": ["model.freeze=backbone", "train.head_lr_mult=10"],
}


def class_folders(raw: Path, out: Path, classes: str) -> Path:
    """The bundled digits of ``classes`` moved into a folder of their own (``prepare`` refuses
    symlinks that point outside the folder it scans)."""
    out.mkdir(parents=True)
    for c in classes:
        (raw / c).rename(out / c)
    return out


def draw_slice(items: list, per_class: int, seed: int) -> list:
    """``per_class`` training images of each class, a different draw per seed."""
    import random

    rng = random.Random(seed)
    chosen = []
    for label in sorted({label for _, label in items}):
        pool = [item for item in items if item[1] == label]
        chosen += rng.sample(pool, min(per_class, len(pool)))
    return chosen


class Curve(Callback):
    """Validation accuracy after each epoch, with the seconds since the fit started (training and
    validation; the model's set-up, loading a weights file included, comes before and is not timed).
    The run stops at ``stop``: later epochs would not change when it got there."""

    def __init__(self, stop: float):
        self.stop = stop
        self.points: list[tuple[int, float, float]] = []  # (epoch, val_accuracy, seconds)

    def on_fit_start(self, trainer) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        self.points.append((metrics["epoch"], metrics["val_accuracy"], time.perf_counter() - self.start))
        if metrics["val_accuracy"] >= self.stop:
            trainer.state.stopped_early = True  # the trainer's own early-stop flag: the loop ends after this epoch

    def reached(self, target: float) -> tuple[int, float] | None:
        """(epoch, seconds) of the first epoch at ``target`` or above; None if the run never got there."""
        return next(((epoch, seconds) for epoch, acc, seconds in self.points if acc >= target), None)

    def cost(self, target: float) -> tuple[int, float]:
        """What reaching ``target`` took; all the run did when it never got there (a lower bound)."""
        return self.reached(target) or self.points[-1][::2]


def run_one(config, name: str, overrides: list[str], train_items, val_items, curve: Curve | None = None) -> dict:
    cfg = load_config(None, [f"run.name={name}", *overrides], base=config.model_dump())
    callbacks = [curve] if curve else None
    run = train(cfg, progress=False, train_items=train_items, val_items=val_items, callbacks=callbacks)
    epochs = run.epoch_metrics()
    return {"final": epochs[-1]["val_accuracy"], "best": max(m["val_accuracy"] for m in epochs)}


def main() -> None:
    parser = common.make_parser(
        __doc__.split("\n\n")[0],
        "smoke run (a few minutes): slices of 5 and 20, 2 seeds, 8 epochs; resnet18 at most 10 epochs",
    )
    parser.add_argument("--part", choices=("slices", "time", "all"), default="all", help="which table(s) to measure")
    parser.add_argument("--config", type=Path, default=common.REPO / "configs" / "digits.yaml")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="source run epochs (None: the recipe's)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs on the slice (None: the recipe's)")
    parser.add_argument("--per-class", type=int, nargs="+", default=[5, 10, 20], help="slice sizes: images a class")
    parser.add_argument("--batch-size", type=int, default=16, help="train.batch_size on the slice")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (slice draw, init, batch order)")
    parser.add_argument(
        "--targets", type=float, nargs="+", default=[0.8, 0.9], help="--part time: validation accuracies to reach"
    )
    parser.add_argument("--time-per-class", type=int, default=10, help="--part time: slice size, images a class")
    parser.add_argument("--time-epochs", type=int, default=15, help="--part time: most epochs on the slice")
    parser.add_argument("--time-pretrain-epochs", type=int, default=3, help="--part time: resnet18's source epochs")
    args = parser.parse_args()
    common.quick_default(args, "pretrain_epochs", 5)
    common.quick_default(args, "epochs", 8)
    common.quick_default(args, "per_class", [5, 20])
    common.quick_default(args, "seeds", 2)
    common.quick_default(args, "time_epochs", 10)
    common.quick_default(args, "time_pretrain_epochs", 2)

    threads = common.set_threads(args.threads)
    common.console.print(common.environment_line(threads), style="dim")
    with common.temp_dir("transfer", args.workdir, args.keep) as tmp:
        write_digits(tmp / "raw")
        prepare(class_folders(tmp / "raw", tmp / "zero-four", "01234"), tmp / "data-0-4", val=0.2, seed=0)
        prepare(class_folders(tmp / "raw", tmp / "five-nine", "56789"), tmp / "data-5-9", val=0.2, seed=0)
        where = [f"run.dir={tmp / 'runs'}", "data.workers=0"]  # a few dozen cached images: no worker processes
        if args.part in ("slices", "all"):
            slices(args, tmp, where)
        if args.part in ("time", "all"):
            time_to_accuracy(args, tmp, where)


def slices(args, tmp: Path, where: list[str]) -> None:
    """The first table: final accuracy on slices of several sizes, for each way of starting."""
    start = time.perf_counter()
    pre = [f"train.epochs={args.pretrain_epochs}"] if args.pretrain_epochs else []
    source_cfg = load_config(args.config, [*where, f"data.root={tmp / 'data-0-4'}", "run.name=source", *pre])
    common.console.print("pretraining on digits 0-4 ...", style="dim")
    source = train(source_cfg, progress=False)
    source_acc = source.epoch_metrics()[-1]["val_accuracy"]

    data = PreparedData.open(tmp / "data-5-9")
    val_items = data.split("val")
    epochs = [f"train.epochs={args.epochs}"] if args.epochs else []
    slice_cfg = load_config(
        args.config, [*where, f"data.root={tmp / 'data-5-9'}", f"train.batch_size={args.batch_size}", *epochs]
    )
    # results[per_class][label] = one dict per seed
    results: dict[int, dict[str, list[dict]]] = {n: {label: [] for label in STARTS} for n in args.per_class}
    for n in args.per_class:
        for seed in range(args.seeds):
            items = draw_slice(data.split("train"), n, seed)
            common.console.print(f"{n} a class, seed {seed} ...", style="dim")
            for i, (label, extra) in enumerate(STARTS.items()):
                init = [f"model.init_from={source.path}"] if label != "scratch" else []
                overrides = [f"train.seed={seed}", *init, *extra]
                results[n][label].append(run_one(slice_cfg, f"n{n}-s{seed}-{i}", overrides, items, val_items))

    rows = []
    for n in args.per_class:
        scratch = statistics.mean(r["final"] for r in results[n]["scratch"])
        for label in STARTS:
            runs = results[n][label]
            final = statistics.mean(r["final"] for r in runs)
            diff = "-" if label == "scratch" else f"{final - scratch:+.2%}"
            best = statistics.mean(r["best"] for r in runs)
            rows.append([label, n, *(f"{r['final']:.2%}" for r in runs), f"{final:.2%}", diff, f"{best:.2%}"])
    common.print_table(
        f"Digits 5-9 from a few images a class, {slice_cfg.train.epochs} epochs each: from scratch vs from a source "
        f"pretrained on digits 0-4 ({source_cfg.train.epochs} epochs, {source_acc:.2%} on its own val split)",
        ["start", "images a class", *(f"seed {s}" for s in range(args.seeds)), "mean", "vs scratch", "mean best epoch"],
        rows,
        note=(
            f"Validation accuracy on the {len(val_items)} validation images of 5-9 (0.56 % each) after the last epoch; "
            "'mean best epoch' takes each run's best epoch instead (chosen on those same images, so optimistic for "
            "every row alike). Within a slice size and seed, every row has the same images, recipe, seed and "
            f"epochs; only the start differs. Wall time {time.perf_counter() - start:.0f} s."
        ),
    )
    for n in args.per_class:  # the claim, judged on the plain fine-tune (same recipe as scratch)
        scratch, tuned = ([r["final"] for r in results[n][label]] for label in ("scratch", "fine-tune (freeze=none)"))
        wins = sum(t > s for t, s in zip(tuned, scratch, strict=True))
        common.verdict(
            wins == args.seeds and statistics.mean(tuned) > statistics.mean(scratch),
            f"{n} images a class: fine-tuned {statistics.mean(tuned):.2%} vs scratch {statistics.mean(scratch):.2%} "
            f"(mean of {args.seeds} seeds, final epoch), fine-tuned ahead on {wins} of {args.seeds} seeds",
        )


RESNET = ["model.name=resnet18", "model.args={stem: small, width: 16}"]  # torchvision's layout, 1/16 of the FLOPs


def time_to_accuracy(args, tmp: Path, where: list[str]) -> None:
    """The second table: epochs and seconds until --target, from scratch and from a weights file."""
    import torch
    from safetensors.torch import load_file

    start = time.perf_counter()
    source_cfg = load_config(
        args.config,
        [*where, f"data.root={tmp / 'data-0-4'}", "run.name=resnet-source", *RESNET]
        + [f"train.epochs={args.time_pretrain_epochs}"],
    )
    common.console.print("pretraining resnet18 on digits 0-4 ...", style="dim")
    pretrain_start = time.perf_counter()
    source = train(source_cfg, progress=False)
    pretrain_s = time.perf_counter() - pretrain_start
    source_acc = source.epoch_metrics()[-1]["val_accuracy"]
    file = tmp / "resnet18-digits04.pth"  # a plain state_dict, as torchvision's ImageNet files are
    torch.save(load_file(source.path / "model" / "model.safetensors"), file)

    data = PreparedData.open(tmp / "data-5-9")
    val_items = data.split("val")
    slice_cfg = load_config(
        args.config,
        [*where, f"data.root={tmp / 'data-5-9'}", f"train.batch_size={args.batch_size}", *RESNET]
        + [f"train.epochs={args.time_epochs}"],
    )
    tuned = f"model.weights={file.name}"
    starts = {"scratch": [], tuned: [f"model.weights={file}"]}
    curves: dict[str, list[Curve]] = {label: [] for label in starts}
    for seed in range(args.seeds):
        items = draw_slice(data.split("train"), args.time_per_class, seed)
        for i, (label, extra) in enumerate(starts.items()):
            curve = Curve(max(args.targets))
            run_one(slice_cfg, f"time-s{seed}-{i}", [f"train.seed={seed}", *extra], items, val_items, curve)
            curves[label].append(curve)
            accuracies = " ".join(f"{acc:.0%}" for _, acc, _ in curve.points)
            common.console.print(f"seed {seed}, {label}: val accuracy by epoch {accuracies}", style="dim")

    common.print_table(
        f"Time to a validation accuracy on digits 5-9 from {args.time_per_class} images a class: resnet18 (small "
        f"stem, width 16) from scratch vs from a file of its weights pretrained on digits 0-4 "
        f"({args.time_pretrain_epochs} epochs, {pretrain_s:.0f} s, {source_acc:.2%} on its own val split)",
        ["start", "target", *(f"seed {s}" for s in range(args.seeds)), "mean epochs", "mean seconds"]
        + ["speed-up (epochs)", "speed-up (seconds)"],
        [row for target in args.targets for row in time_rows(curves, target)],
        note=(
            f"The first epoch whose accuracy on the {len(val_items)} validation images of 5-9 reaches the target, "
            "and the seconds of training and validation since the fit started (a run stops at the highest target); "
            f"at most {args.time_epochs} epochs, batch {args.batch_size}, the digits recipe otherwise. A run that "
            "never gets there counts with all it ran, so a mean with >= is a lower bound. Both starts do the same "
            "work per epoch, so epochs are the figure that other processes on the machine do not disturb. Same "
            "images, recipe and seed per column; only the start differs. The pretraining is paid once "
            f"({pretrain_s:.0f} s). Wall time {time.perf_counter() - start:.0f} s."
        ),
    )
    for target in args.targets:
        fewer = sum(
            t.cost(target)[0] < s.cost(target)[0] for t, s in zip(curves[tuned], curves["scratch"], strict=True)
        )
        got = all(c.reached(target) for c in curves[tuned])
        common.verdict(
            fewer == args.seeds and got,
            f"{target:.0%}: from the weights file in fewer epochs than from scratch on {fewer} of {args.seeds} seeds",
        )


def time_rows(curves: dict[str, list[Curve]], target: float) -> list[list[str]]:
    """One row a start: per seed the epochs and seconds to ``target``, their means, and the speed-up."""
    scratch = curves["scratch"]
    base = [statistics.mean(c.cost(target)[k] for c in scratch) for k in (0, 1)]
    scratch_missed = any(c.reached(target) is None for c in scratch)
    rows = []
    for label, cs in curves.items():
        mean = [statistics.mean(c.cost(target)[k] for c in cs) for k in (0, 1)]
        bound = ">= " if any(c.reached(target) is None for c in cs) else ""
        cells = [
            f"{'' if c.reached(target) else 'not in '}{c.cost(target)[0]} ep, {c.cost(target)[1]:.0f} s" for c in cs
        ]
        ratios = [f"{'>= ' if scratch_missed and label != 'scratch' else ''}{base[k] / mean[k]:.2f}x" for k in (0, 1)]
        rows.append([label, f"{target:.0%}", *cells, f"{bound}{mean[0]:.1f}", f"{bound}{mean[1]:.0f} s", *ratios])
    return rows


if __name__ == "__main__":
    main()
