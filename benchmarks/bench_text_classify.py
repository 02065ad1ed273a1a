"""Text classification on pydoc-topics: what a pretrained encoder is worth, and how to adapt it.

Four runs of all-MiniLM-L6-v2 (22.7 M parameters) on the same paragraphs, max_length, epochs,
batch size, schedule and seed; only what starts the model and what trains differ:

- fine-tune: the pretrained encoder, every weight trains (train.lr 1e-4)
- linear probe: the pretrained encoder frozen, only the classifier trains (model.freeze=backbone, lr 3e-3)
- LoRA: rank-8 adapters on the attention query/value layers + the classifier (model.lora.r=8, lr 1e-3)
- random init: the same architecture from random weights, trained like the fine-tune (lr 1e-4)

Each method gets its usual learning rate (a probe or adapters need larger steps than a whole
pretrained encoder); the random-init run uses the fine-tune's recipe as it is, so it shows what
pretraining alone contributes. Accuracy is the package's: the best epoch on the validation paragraphs.

Target: the fine-tuned encoder beats both the linear probe and the random-init model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

import common
from modelcycle import load_config, train  # the first use imports torch
from modelcycle.data.pydoc_topics import write_pydoc_topics
from modelcycle.runs import read_manifest

METHODS = {
    "fine-tune": ["model.freeze=none", "train.lr=0.0001"],
    "linear probe": ["model.freeze=backbone", "train.lr=0.003"],
    "LoRA r=8": ["model.lora.r=8", "train.lr=0.001"],
    "random init": ["model.args={pretrained: false}", "train.lr=0.0001"],
}


def subsample(src: Path, dst: Path, per_group: int | None, seed: int = 0) -> dict[str, int]:
    """At most ``per_group`` lines per label of ``src``, drawn with a seed, in file order."""
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for label in sorted({r["label"] for r in rows}):
        members = [i for i, r in enumerate(rows) if r["label"] == label]
        chosen = members if per_group is None else [members[j] for j in rng.permutation(len(members))[:per_group]]
        keep.update(chosen)
    dst.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(rows) if i in keep))
    return {label: sum(rows[i]["label"] == label for i in keep) for label in sorted({r["label"] for r in rows})}


def measured(config) -> dict:
    start = time.perf_counter()
    run = train(config, progress=False)
    wall = time.perf_counter() - start
    manifest = read_manifest(run.model_dir)
    epochs = run.epoch_metrics()
    return {
        "accuracy": manifest["metrics"].get("val_accuracy", float("nan")),
        "loss": manifest["metrics"].get("val_loss", float("nan")),
        "trainable": manifest["fine_tuning"]["trainable"],
        "train_s": sum(m["epoch_time_s"] for m in epochs),
        "wall": wall,
    }


def main() -> None:
    parser = common.make_parser(
        __doc__.split("\n\n")[0], "smoke run (~2 min): 16 train / 10 val paragraphs per group, max_length 64"
    )
    parser.add_argument("--train-per-group", type=int, default=120, help="training paragraphs per topic group")
    parser.add_argument("--val-per-group", type=int, default=None, help="validation paragraphs per group (None: all)")
    parser.add_argument("--max-length", type=int, default=96, help="data.max_length (tokens)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for all four runs")
    args = parser.parse_args()
    common.quick_default(args, "train_per_group", 16)
    common.quick_default(args, "val_per_group", 10)
    common.quick_default(args, "max_length", 64)

    threads = common.set_threads(args.threads)
    common.console.print(common.environment_line(threads), style="dim")
    with common.temp_dir("text", args.workdir, args.keep) as tmp:
        write_pydoc_topics(tmp / "full")
        (tmp / "data").mkdir()
        train_counts = subsample(tmp / "full" / "train.jsonl", tmp / "data" / "train.jsonl", args.train_per_group)
        val_counts = subsample(tmp / "full" / "val.jsonl", tmp / "data" / "val.jsonl", args.val_per_group)
        shared = [
            "run.task=text_classify",
            f"data.root={tmp / 'data'}",
            f"run.dir={tmp / 'runs'}",
            f"data.max_length={args.max_length}",
            f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch_size}",
            *args.overrides,
        ]
        common.console.print(
            f"pydoc-topics: {sum(train_counts.values())} train / {sum(val_counts.values())} val paragraphs "
            f"({len(train_counts)} groups), max_length {args.max_length}, {args.epochs} epochs, "
            f"batch {args.batch_size}",
            style="dim",
        )
        results = {}
        for i, (name, extra) in enumerate(METHODS.items()):
            common.console.print(f"training {name} ...", style="dim")
            recipe = common.REPO / "configs" / "pydoc-topics.yaml"
            results[name] = measured(load_config(recipe, [*shared, f"run.name=run-{i}", *extra]))

    chance = max(val_counts.values()) / sum(val_counts.values())
    common.print_table(
        f"text classification, pydoc-topics ({len(train_counts)} groups), all-MiniLM-L6-v2",
        ["method", "trainable params", "val accuracy", "val loss", "train s", "wall s"],
        [
            [name, f"{r['trainable']:,}", f"{r['accuracy']:.2%}", r["loss"], r["train_s"], r["wall"]]
            for name, r in results.items()
        ],
        note=f"majority-class accuracy {chance:.2%}; train s = the epochs' time, wall s adds loading and packaging",
    )
    tuned = results["fine-tune"]["accuracy"]
    common.verdict(
        tuned > results["linear probe"]["accuracy"] and tuned > results["random init"]["accuracy"],
        f"fine-tuned {tuned:.2%} vs linear probe {results['linear probe']['accuracy']:.2%} "
        f"and random init {results['random init']['accuracy']:.2%}",
    )


if __name__ == "__main__":
    main()
