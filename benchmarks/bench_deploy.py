"""Deploy figures: ONNX Runtime (fp32 and int8) against PyTorch fp32 eager, on trained models.

The script trains two models on the bundled digits (the digits recipe's simple_cnn, and resnet18
at the same 16 px input), exports each to ONNX, quantizes it to int8 with ``modelcycle compress``,
and measures, in this one process with the same thread count for both runtimes:

- throughput at batch 32: PyTorch fp32 eager vs ONNX Runtime int8 (target >= 2x), and the
  validation accuracy of both (target: int8 within 0.5 points);
- latency at batch 1 (median of many single-image calls): PyTorch eager vs ONNX Runtime fp32
  (target >= 1.5x faster).
"""

from __future__ import annotations

from pathlib import Path

import common
from modelcycle import evaluate
from modelcycle.compress.quantize import quantize_int8
from modelcycle.data.manifest import PreparedData
from modelcycle.evaluation.inference import preprocess
from modelcycle.evaluation.speed import latency_ms, throughput
from modelcycle.export.export import export
from modelcycle.export.runtime import load_predictor

INT8_SPEEDUP = 2.0
ACCURACY_POINTS = 0.5
ONNX_LATENCY_SPEEDUP = 1.5


def build_models(root: Path, epochs: int, resnet_epochs: int) -> dict[str, Path]:
    common.digits_data(root)
    return {
        "simple_cnn": common.train_on_digits(root, "simple_cnn", [f"train.epochs={epochs}"]),
        "resnet18": common.train_on_digits(
            root, "resnet18", [*common.RESNET18_ON_DIGITS, f"train.epochs={resnet_epochs}"]
        ),
    }


def bench_model(name: str, run: Path, root: Path, args) -> dict:
    export(run, "onnx")
    quantize_int8(run, root / f"{name}-int8", calib=args.calib)
    package = root / f"{name}-int8" / "model"
    torch_p = load_predictor(run, "torch")
    onnx_p = load_predictor(run, "onnx", threads=args.threads)
    int8_p = load_predictor(package, threads=args.threads)
    items = PreparedData.open(root / "data").split("val")
    images = preprocess(torch_p.manifest, items).numpy()
    batch = images[:32]
    rates = common.alternate(
        {
            "torch": lambda: throughput(torch_p, batch, args.seconds),
            "int8": lambda: throughput(int8_p, batch, args.seconds),
            "onnx": lambda: throughput(onnx_p, batch, args.seconds),
        },
        args.rounds,
    )
    lat = {key: latency_ms(p, images, args.calls) for key, p in (("torch", torch_p), ("onnx", onnx_p))}
    acc = {"torch": evaluate(run, backend="torch")["accuracy"], "int8": evaluate(package)["accuracy"]}
    return {
        "name": name,
        "rates": {k: common.median(v) for k, v in rates.items()},
        "latency": lat,
        "accuracy": acc,
        "bytes": {
            "torch": (run / "model" / "model.safetensors").stat().st_size,
            "int8": (package / "model.int8.onnx").stat().st_size,
        },
    }


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "smoke run: 2 epochs, short timings")
    parser.add_argument("--epochs", type=int, default=15, help="simple_cnn epochs (the digits recipe)")
    parser.add_argument("--resnet-epochs", type=int, default=4)
    parser.add_argument("--calib", type=int, default=256, help="calibration images for int8")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300, help="single-image calls for latency")
    args = parser.parse_args()
    for name, value in (("epochs", 2), ("resnet_epochs", 1), ("seconds", 0.5), ("rounds", 1), ("calls", 50)):
        common.quick_default(args, name, value)
    threads = common.set_threads(args.threads)
    common.console.print(common.environment_line(threads), style="dim")
    with common.temp_dir("deploy", args.workdir, args.keep) as root:
        runs = build_models(root, args.epochs, args.resnet_epochs)
        results = [bench_model(name, run, root, args) for name, run in runs.items()]

    rows = []
    for r in results:
        rows.append(
            [
                r["name"],
                r["rates"]["torch"],
                r["rates"]["onnx"],
                r["rates"]["int8"],
                f"{common.ratio(r['rates']['int8'], r['rates']['torch']):.2f}x",
                f"{r['accuracy']['torch']:.2%}",
                f"{r['accuracy']['int8']:.2%}",
                f"{r['latency']['torch'][0]:.2f} / {r['latency']['torch'][1]:.2f}",
                f"{r['latency']['onnx'][0]:.2f} / {r['latency']['onnx'][1]:.2f}",
                f"{common.ratio(r['latency']['torch'][0], r['latency']['onnx'][0]):.2f}x",
                f"{r['bytes']['torch'] / 1e6:.2f} -> {r['bytes']['int8'] / 1e6:.2f}",
            ]
        )
    common.print_table(
        "Deploy: PyTorch fp32 eager vs ONNX Runtime fp32 / int8 (digits 16 px, val split of 359 images)",
        [
            "model",
            "torch img/s b32",
            "onnx img/s b32",
            "int8 img/s b32",
            "int8 speed-up",
            "torch acc",
            "int8 acc",
            "torch ms p50/p99 b1",
            "onnx ms p50/p99 b1",
            "onnx b1 speed-up",
            "MB torch -> int8",
        ],
        rows,
        note="b32: images/s at batch 32; b1 ms: p50 / p99 latency of single images; x: speed-up over torch. "
        f"{threads} threads for both runtimes; throughput medians of {args.rounds} alternating rounds of "
        f"{args.seconds:g} s; latency over {args.calls} single-image calls.",
    )
    for r in results:
        speed = common.ratio(r["rates"]["int8"], r["rates"]["torch"])
        points = abs(r["accuracy"]["torch"] - r["accuracy"]["int8"]) * 100
        common.verdict(
            speed >= INT8_SPEEDUP,
            f"{r['name']}: int8 throughput {speed:.2f}x PyTorch fp32 at batch 32 (target >= {INT8_SPEEDUP}x)",
        )
        common.verdict(
            points <= ACCURACY_POINTS,
            f"{r['name']}: int8 top-1 {r['accuracy']['int8']:.2%} vs fp32 "
            f"{r['accuracy']['torch']:.2%} ({points:.2f} points; target <= {ACCURACY_POINTS})",
        )
        lat = common.ratio(r["latency"]["torch"][0], r["latency"]["onnx"][0])
        common.verdict(
            lat >= ONNX_LATENCY_SPEEDUP,
            f"{r['name']}: ONNX fp32 batch-1 latency {lat:.2f}x faster than "
            f"PyTorch eager (target >= {ONNX_LATENCY_SPEEDUP}x)",
        )


if __name__ == "__main__":
    main()
