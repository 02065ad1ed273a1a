"""Verbs after training: export, compress, serve, monitor, profile and bench (registered on the
main app by cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from modelcycle.cli_common import BACKEND_HELP
from modelcycle.errors import UserError
from modelcycle.progress import console, info


def export(
    run: Path = typer.Argument(..., help="A run folder or a model package."),
    fmt: str = typer.Option(
        "onnx", "--format", help="onnx (ONNX Runtime, any language), torchscript (C++) or pt2 (torch.export)."
    ),
    opset: int | None = typer.Option(None, help="ONNX opset, 18 if not given (recorded in modelcycle.json)."),
    data: Path | None = typer.Option(None, help="Manifest of images for the parity check (default: the val split)."),
    images: int = typer.Option(64, help="How many validation images the parity check uses."),
):
    """Add an ONNX, TorchScript or .pt2 file to the model package, checked against PyTorch on real
    inputs; the file carries the class names and preprocessing in its metadata."""
    from modelcycle.api import export_model as run_export

    record = run_export(run, fmt, opset=opset, data=data, count=images)
    parity = record["parity"]
    unit = "texts" if "texts" in parity else "images"
    info(
        f"{fmt}: {record['file']} ({record['bytes'] / 1e6:.1f} MB) matches PyTorch on {parity[unit]} {unit}: "
        f"max probability difference {parity['max_abs_diff']:.1e}, top-1 agreement {parity['top1_agreement']:.1%}"
    )


def compress(
    run: Path = typer.Argument(..., help="A run folder or a model package (PyTorch weights)."),
    quantize: str | None = typer.Option(
        None, help="int8: static post-training quantization in ONNX Runtime (QDQ). Give this or --prune."
    ),
    calib: int = typer.Option(256, help="With --quantize: training images to calibrate activation ranges on."),
    prune: float | None = typer.Option(
        None, help="Fraction of weights to zero, between 0 and 1 (e.g. 0.5); the first and last layer stay dense."
    ),
    prune_method: str = typer.Option(
        "unstructured",
        help="unstructured: the smallest weights over the whole net (global L1); "
        "structured: whole conv filters with the smallest L2 norm x |BatchNorm gamma|, the same fraction per layer.",
    ),
    recalibrate: int | None = typer.Option(
        None, help="With --prune: training images to re-estimate BatchNorm statistics on (default 512; 0: off)."
    ),
    finetune_epochs: int = typer.Option(
        0, help="With --prune: epochs of training with the pruned weights held at zero; OUT becomes a run folder."
    ),
    lr: float | None = typer.Option(
        None, help="Fine-tuning learning rate (default: the source run's, times 0.1 unstructured or 1 structured)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="With --prune --finetune-epochs: continue an interrupted fine-tune in OUT, same masks."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Folder for the new package (written to OUT/model/); a run folder with --finetune-epochs."
    ),
):
    """Make a smaller, faster copy of a model (--quantize) or a sparse one (--prune) as a new package."""
    if calib < 1:
        raise UserError(f"--calib {calib}: calibrate on at least one image (256 is a good default)")
    if (quantize is None) == (prune is None):
        raise UserError("compress needs exactly one of --quantize int8 or --prune SPARSITY (e.g. --prune 0.5)")
    if prune is not None:
        _compress_prune(run, out, prune, prune_method, finetune_epochs, lr, recalibrate, resume)
        return
    if finetune_epochs or lr is not None or recalibrate is not None or resume:
        raise UserError(
            "--finetune-epochs, --lr, --recalibrate and --resume go with --prune; int8 quantization does not train"
        )
    from modelcycle.api import quantize_int8

    if quantize != "int8":
        raise UserError(f"--quantize {quantize!r}: only int8 is supported")
    manifest = quantize_int8(run, out, calib=calib)
    q = manifest["quantization"]
    info(
        f"int8 package: {manifest['_dir']} (calibrated on {q['calibration_images']} images); top-1 agreement with "
        f"fp32 {q['agreement_with_fp32']['top1_agreement']:.1%} on {q['agreement_with_fp32']['images']} images"
    )


def _compress_prune(
    run: Path, out: Path, sparsity: float, method: str, epochs: int, lr: float | None, recal: int | None, resume: bool
) -> None:
    from modelcycle.api import prune_model
    from modelcycle.compress.prune import RECALIBRATE

    recal = RECALIBRATE if recal is None else recal
    manifest = prune_model(
        run, out, sparsity, method=method, finetune_epochs=epochs, lr=lr, recalibrate=recal, resume=resume
    )
    p = manifest["pruning"]
    acc, reached = p["accuracy"], p["sparsity"]
    table = Table(title=f"{p['method']} pruning to {p['target']:.0%}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row(f"val accuracy, source ({acc['images']} images)", f"{acc['source']:.2%}")
    table.add_row("val accuracy, pruned", f"{acc['pruned']:.2%}")
    if acc["recalibrated"] is not None:
        table.add_row(
            f"val accuracy, pruned + BatchNorm re-estimated ({p['recalibrate']} images)", f"{acc['recalibrated']:.2%}"
        )
    if epochs:
        stage = f"val accuracy, fine-tuned ({epochs} epoch{'s' * (epochs > 1)}, lr {p['finetune_lr']:.3g})"
        table.add_row(stage, f"{acc['finetuned']:.2%}")
    table.add_row("sparsity, prunable weights", f"{reached['prunable']:.2%}")
    table.add_row("sparsity, all parameters", f"{reached['overall']:.2%}")
    console.print(table)
    info(
        f"pruned package: {manifest['_dir']} (dense layout: same file size and speed; kept dense: "
        f"{', '.join(p['kept_dense'])})" + (f"\nrun folder: {out} (modelcycle evaluate {out})" if epochs else "")
    )


def serve(
    models: list[str] = typer.Argument(
        ...,
        help="Run folders or model packages, each served under its folder name or as NAME=PATH; "
        "serve.KEY=VALUE settings may follow (serve.max_batch_size=16).",
    ),
    host: str | None = typer.Option(None, help="Address to listen on (default 127.0.0.1: this machine only)."),
    port: int | None = typer.Option(None, help="Port (default 8000; 0 picks a free one and prints it)."),
    backend: str | None = typer.Option(None, help=BACKEND_HELP),
    api_key_env: str | None = typer.Option(
        None, help="Environment variable holding an API key; requests then need 'Authorization: Bearer KEY'."
    ),
    config: Path | None = typer.Option(None, help="YAML file whose serve: (and monitor:) section to use."),
    monitor: Path | None = typer.Option(
        None,
        "--monitor",
        help="Log predictions and input profiles to DIR/predictions.db and export drift on /metrics "
        "(monitor.KEY=VALUE settings may follow the models; see docs/monitor.md).",
    ),
):
    """Serve models over HTTP: image classifiers on /v1/predict, KServe v2 (/v2/...), a playground at /;
    language models on the OpenAI API (/v1/models, /v1/chat/completions, /v1/completions). /metrics, /docs."""
    from modelcycle.api import serve_models as run_server
    from modelcycle.config import load_config

    settings = [m for m in models if m.split("=", 1)[0].startswith(("serve.", "monitor."))]
    specs = [m for m in models if m not in settings]
    if not specs:
        raise UserError("no model to serve; pass a run folder such as runs/digits-demo")
    options = {"host": host, "port": port, "backend": backend, "api_key_env": api_key_env}
    settings += [f"serve.{k}={v}" for k, v in options.items() if v is not None]
    settings += [f"monitor.dir={monitor}"] if monitor is not None else []
    cfg = load_config(config, settings)
    run_server(specs, cfg.serve, cfg.monitor)


def monitor_log(
    folder: Path = typer.Argument(..., help="The folder given to `serve --monitor` (it holds predictions.db)."),
    settings: list[str] | None = typer.Argument(
        None, help="monitor.KEY=VALUE settings: monitor.window=200 monitor.psi_warn=0.05 ..."
    ),
    reference: Path | None = typer.Option(
        None,
        help="Run folder or package whose reference profile to compare with (computed if missing); "
        "default: the profile the server stored in the log.",
    ),
    model: str | None = typer.Option(None, help="Which served model (needed when the log holds several)."),
    window: int | None = typer.Option(None, help="Images per window (monitor.window, default 200)."),
    step: int | None = typer.Option(None, help="Images between window starts (default: the window: no overlap)."),
    alert_psi: float | None = typer.Option(None, help="PSI from which a feature counts as drifted (default 0.2)."),
    watch: bool = typer.Option(
        False, "--watch", help="Judge the latest window, then each new one; exit 1 at the first drift (cron, CI)."
    ),
    interval: float = typer.Option(5.0, help="With --watch: seconds between looks at the log."),
    duration: float | None = typer.Option(
        None, help="With --watch: stop after this many seconds with exit 0 if nothing drifted (0: look once)."
    ),
    out: Path | None = typer.Option(None, help="Folder for monitor.md, monitor.html and plots (default FOLDER)."),
    config: Path | None = typer.Option(None, help="YAML file whose monitor: section to use."),
    as_json: bool = typer.Option(False, "--json", help="Print the windows, scores and verdicts as JSON."),
):
    """Drift report of a served model: PSI/KS per input feature, chi-squared on the class mix, embedding
    shift, confidence and out-of-distribution rate, per window; writes monitor.md + monitor.html."""
    from modelcycle.config import load_config
    from modelcycle.monitor import watch as monitoring

    flags = [f"monitor.{k}={v}" for k, v in (("window", window), ("step", step)) if v is not None]
    cfg = load_config(config, [*(settings or []), *flags]).monitor
    if watch:
        code = monitoring.watch(
            folder, cfg, reference, model, alert_psi, interval, duration, monitoring.printer(as_json)
        )
        raise typer.Exit(code)
    summary = monitoring.report(folder, cfg, reference, model, alert_psi, out)
    if as_json:
        print(json.dumps(summary))
        return
    table = Table(title=f"{summary['model']}: {summary['images']} images logged, windows of {summary['window']}")
    for column in ("window", "start (UTC)", "images", "p99 ms", "verdict", "drifted / warned"):
        table.add_column(column, justify="right" if column in ("images", "p99 ms") else "left")
    for w in summary["windows"]:
        colour = {"drift": "red", "warn": "yellow"}.get(w["verdict"], "green")
        features = ", ".join(w["drifted"] or w["warned"]) or "-"
        table.add_row(
            str(w["index"]), w["start"], str(w["images"]), f"{w['latency_p99_ms']:.1f}",
            f"[{colour}]{w['verdict']}[/]", escape(features),
        )  # fmt: skip
    console.print(table)
    for line in monitoring.explain(summary):
        info(line)
    info(f"report: {summary['report']}")


def profile(
    run: Path = typer.Argument(..., help="A run folder or a model package."),
    data: Path | None = typer.Option(None, help="Manifest of typical images (default: the package's val split)."),
    images: int | None = typer.Option(None, help="At most this many images (monitor.profile_images, default 2000)."),
):
    """(Re)compute the reference profile `monitor` compares served traffic with, into the package."""
    from modelcycle.config import load_config
    from modelcycle.monitor.profile import profile_path, write_profile

    cfg = load_config(None, [f"monitor.profile_images={images}"] if images is not None else []).monitor
    result = write_profile(run, cfg, data)
    embedding = result["embedding"]
    info(
        f"profile of {result['images']} images from {result['source']} in {profile_path(run)}: accuracy "
        f"{result['accuracy']:.2%}, OOD below confidence {result['ood']['threshold']:.3f}, "
        + (f"embedding {len(embedding['basis'])} components" if embedding else "no embedding (no PyTorch head)")
    )


def bench(
    runs: list[Path] = typer.Argument(..., help="Run folders or model packages (an int8 package too)."),
    min_accuracy: float | None = typer.Option(None, help="Exit 1 if any validated backend scores below this."),
    data: Path | None = typer.Option(None, help="Manifest to measure on (default: each package's val split)."),
    seconds: float = typer.Option(2.0, help="Seconds of batch-32 calls per throughput figure."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
):
    """Accuracy, size, latency (batch 1) and throughput (batch 32) per package and backend."""
    from modelcycle.api import bench as run_bench
    from modelcycle.evaluation.bench import MEASURED

    rows = run_bench(runs, data=data, seconds=seconds)
    if as_json:
        print(json.dumps(rows))
    else:
        table = Table(title="modelcycle bench")
        for column in ("package", "backend", "status", "MB", "accuracy", "p50 ms b1", "p99 ms b1", "img/s b32"):
            table.add_column(column, justify="left" if column in ("package", "backend", "status") else "right")
        for r in rows:
            ok = r["status"] in MEASURED
            table.add_row(
                r["package"],
                r["backend"],
                r["status"],
                *(
                    [
                        f"{r['bytes'] / 1e6:.2f}",
                        f"{r['accuracy']:.2%}",
                        f"{r['latency_p50_ms']:.2f}",
                        f"{r['latency_p99_ms']:.2f}",
                        f"{r['throughput_b32']:,.0f}",
                    ]
                    if ok
                    else ["-"] * 5
                ),
            )
        console.print(table)
        for r in rows:
            if "error" in r:
                info(f"{r['package']} {r['backend']}: {r['error']}")
    below = [r for r in rows if min_accuracy is not None and r["status"] in MEASURED and r["accuracy"] < min_accuracy]
    if below:
        console.print(
            Text.assemble(
                ("below --min-accuracy: ", "bold red"),
                ", ".join(f"{r['package']} {r['backend']} {r['accuracy']:.2%}" for r in below),
            )
        )
        raise typer.Exit(1)
