"""Export figures: ONNX vs TorchScript vs torch.export (.pt2), each file written by `modelcycle export`.

The script trains two models on the bundled digits (the digits recipe's simple_cnn at 16 px, and
resnet18 at 64 px with torchvision's stem) and exports each to the three formats, alternating the
order round by round, in this one process. Per format it reports the export time (the whole
`modelcycle export`: capture, write, metadata, reload and the parity check on the validation
images), the parity error against the PyTorch model (max |difference| of softmax probabilities,
top-1 agreement), the file size and the time to load the file back and answer a first batch.
TorchScript (the long-standing format) is the baseline of the time ratios.
"""

from __future__ import annotations

from pathlib import Path

import common
from modelcycle.data.manifest import PreparedData
from modelcycle.evaluation.inference import preprocess
from modelcycle.export.export import export
from modelcycle.export.runtime import load_predictor

FORMATS = ("onnx", "torchscript", "pt2")
BASELINE = "torchscript"


def build_models(root: Path, epochs: int) -> dict[str, Path]:
    common.digits_data(root)
    train = [f"train.epochs={epochs}", "train.warmup_epochs=0"]
    return {
        "simple_cnn 16 px": common.train_on_digits(root, "simple_cnn", train),
        # torchvision's stem (stride-2 conv + max pool): the small stem that `auto` picks at 64 px keeps
        # 64x64 maps through layer1, 16x the compute, and training would dominate the script
        "resnet18 64 px": common.train_on_digits(
            root,
            "resnet18",
            [*common.RESNET18_ON_DIGITS, *train, "data.image_size=64", 'model.args={"stem": "imagenet"}'],
        ),
    }


def bench_model(name: str, run: Path, root: Path, args) -> list[dict]:
    records: dict[str, dict] = {}

    def export_once(fmt: str) -> float:
        records[fmt], seconds = common.timed(lambda: export(run, fmt, count=args.images))
        return seconds

    times = common.alternate({fmt: (lambda fmt=fmt: export_once(fmt)) for fmt in FORMATS}, args.rounds)
    val = PreparedData.open(root / "data").split("val")[:32]
    batch = preprocess(load_predictor(run, "torch").manifest, val).numpy()
    rows = []
    for fmt in FORMATS:
        _, reload_s = common.timed(lambda fmt=fmt: load_predictor(run, fmt)(batch))
        record = records[fmt]
        rows.append(
            {
                "model": name,
                "format": fmt,
                "export_s": common.median(times[fmt]),
                "spread": f"{min(times[fmt]):.2f}..{max(times[fmt]):.2f}",
                "parity": record["parity"],
                "mb": record["bytes"] / 1e6,
                "reload_s": reload_s,
            }
        )
    base = next(r["export_s"] for r in rows if r["format"] == BASELINE)
    for row in rows:
        row["ratio"] = common.ratio(row["export_s"], base)
    return rows


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "smoke run: 1 epoch, 1 round")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per model (parity needs no accuracy)")
    parser.add_argument("--rounds", type=int, default=3, help="exports per format, alternating the order")
    parser.add_argument("--images", type=int, default=64, help="validation images in each parity check")
    args = parser.parse_args()
    for name, value in (("epochs", 1), ("rounds", 1)):
        common.quick_default(args, name, value)
    threads = common.set_threads(args.threads)
    common.console.print(common.environment_line(threads), style="dim")
    with common.temp_dir("export", args.workdir, args.keep) as root:
        runs = build_models(root, args.epochs)
        rows = [row for name, run in runs.items() for row in bench_model(name, run, root, args)]

    common.print_table(
        "Export: ONNX vs TorchScript vs .pt2 (torch.export), digits val split",
        ["model", "format", "export s", "min..max", f"vs {BASELINE}", "max |dp|", "top-1 agree", "MB", "load+b32 s"],
        [
            [
                r["model"],
                r["format"],
                r["export_s"],
                r["spread"],
                f"{r['ratio']:.2f}x",
                r["parity"]["max_abs_diff"],
                f"{r['parity']['top1_agreement']:.1%}",
                r["mb"],
                r["reload_s"],
            ]
            for r in rows
        ],
        note=f"export s: median of {args.rounds} alternating rounds of the whole `modelcycle export` (capture, "
        f"write with metadata, reload, parity on {args.images} val images); max |dp|: the largest difference of "
        f"softmax probabilities from PyTorch eager; load+b32 s: loading the file and a first batch of 32. "
        f"{threads} torch threads.",
    )


if __name__ == "__main__":
    main()
