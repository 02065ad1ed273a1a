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
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import common
from modelcycle import load_config, prepare, train, write_digits  # the first use imports torch
from modelcycle.data.manifest import PreparedData

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


def run_one(config, name: str, overrides: list[str], train_items, val_items) -> dict:
    cfg = load_config(None, [f"run.name={name}", *overrides], base=config.model_dump())
    run = train(cfg, progress=False, train_items=train_items, val_items=val_items)
    epochs = run.epoch_metrics()
    return {"final": epochs[-1]["val_accuracy"], "best": max(m["val_accuracy"] for m in epochs)}


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "smoke run (~2 min): slices of 5 and 20, 2 seeds, 8 epochs")
    parser.add_argument("--config", type=Path, default=common.REPO / "configs" / "digits.yaml")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="source run epochs (None: the recipe's)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs on the slice (None: the recipe's)")
    parser.add_argument("--per-class", type=int, nargs="+", default=[5, 10, 20], help="slice sizes: images a class")
    parser.add_argument("--batch-size", type=int, default=16, help="train.batch_size on the slice")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (slice draw, init, batch order)")
    args = parser.parse_args()
    common.quick_default(args, "pretrain_epochs", 5)
    common.quick_default(args, "epochs", 8)
    common.quick_default(args, "per_class", [5, 20])
    common.quick_default(args, "seeds", 2)

    threads = common.set_threads(args.threads)
    common.console.print(common.environment_line(threads), style="dim")
    start = time.perf_counter()
    with common.temp_dir("transfer", args.workdir, args.keep) as tmp:
        write_digits(tmp / "raw")
        prepare(class_folders(tmp / "raw", tmp / "zero-four", "01234"), tmp / "data-0-4", val=0.2, seed=0)
        prepare(class_folders(tmp / "raw", tmp / "five-nine", "56789"), tmp / "data-5-9", val=0.2, seed=0)
        where = [f"run.dir={tmp / 'runs'}", "data.workers=0"]  # a few dozen cached images: no worker processes
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


if __name__ == "__main__":
    main()
