"""The command line: one verb per lifecycle stage, each a thin call into the Python API."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from modelcycle.errors import UserError
from modelcycle.progress import console, info, stdout

app = typer.Typer(
    help="modelcycle: take a model from raw data (an image folder, or JSONL texts) to an evaluated, resumable, "
    "packaged model.\n\n"
    "Typical flow: datasets/prepare -> inspect -> train -> evaluate -> predict -> export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

BACKEND_HELP = "auto (what the package holds), torch, onnx or torchscript (an export made by `modelcycle export`)."
OVERRIDES_HELP = "Config overrides as key=value, e.g. train.epochs=10 data.root=data/flowers run.name=flowers"


def _split_config(config: str, overrides: list[str] | None) -> tuple[str | None, list[str]]:
    """`train data.root=x` (no file) is allowed: a first argument with '=' is an override."""
    overrides = list(overrides or [])
    if "=" in config and not Path(config).exists():
        return None, [config, *overrides]
    return config, overrides


@app.command()
def datasets(
    name: str = typer.Argument(
        ...,
        help="Bundled dataset: digits (scikit-learn's handwritten digits, an image folder), pydoc-topics "
        "(paragraphs of Python's docs -> topic group, train.jsonl/val.jsonl for run.task=text_classify) or pydocs "
        "(Python's docs as a pretraining corpus and chat instructions, for `modelcycle lm`).",
    ),
    out: Path = typer.Option(..., "--out", help="Folder to write the dataset into."),
):
    """Write a bundled demo dataset, offline: digits (image folder), pydoc-topics (text JSONL) or pydocs (LM data)."""
    from modelcycle.data.demo import DATASETS, write_dataset

    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    write_dataset(name, out)
    info(f"wrote {name} to {out}/ (" + DATASETS[name] + ")")


@app.command()
def prepare(
    src: Path = typer.Argument(..., help="Folder of class folders (flower_photos/daisy/*.jpg) or a manifest file."),
    out: Path = typer.Option(..., "--out", help="Where to write train.txt, val.txt, classes.txt, stats.json."),
    val: float = typer.Option(0.2, help="Fraction of each class held out for validation."),
    test: float = typer.Option(0.0, help="Fraction of each class held out for testing."),
    seed: int = typer.Option(0, help="Seed of the split: the same seed gives the same split."),
):
    """Verify every image and write a stratified, reproducible split (unreadable files -> rejected.txt)."""
    from modelcycle.api import prepare as run_prepare

    result = run_prepare(src, out, val=val, test=test, seed=seed)
    table = Table(title=f"{out}: {result.stats['num_images']} images, {len(result.rejected)} rejected")
    table.add_column("class")
    for split in result.counts:
        table.add_column(split, justify="right")
    for name in result.classes:
        table.add_row(name, *[str(result.counts[s].get(name, 0)) for s in result.counts])
    console.print(table)


@app.command()
def inspect(
    data: Path = typer.Argument(..., help="A folder made by `modelcycle prepare`."),
    config: str | None = typer.Option(None, help="Recipe whose data section (size, augmentation) to show."),
    out: Path | None = typer.Option(None, help="PNG to write (default DATA/batch.png)."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
):
    """Print the class table and save a PNG grid of one augmented training batch."""
    from modelcycle.config import load_config
    from modelcycle.data.inspect import batch_grid, class_table
    from modelcycle.data.manifest import PreparedData

    cfg = load_config(config, overrides or [])
    prepared = PreparedData.open(data)
    rows = class_table(prepared)
    table = Table(title=f"{data}: {len(prepared.classes)} classes")
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in rows:
        table.add_row(*[str(v) for v in row.values()])
    console.print(table)
    png = batch_grid(prepared, cfg.data, out or data / "batch.png", seed=cfg.train.seed)
    info(f"augmented batch: {png}")


@app.command()
def train(
    config: str = typer.Argument(..., help="YAML recipe (configs/digits.yaml) or a first key=value override."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue runs/NAME from checkpoints/last.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing run folder of the same name."),
    nproc: int | None = typer.Option(
        None,
        "--nproc",
        help="Train on N processes of this machine (DDP through torchrun; train.batch_size is the global batch, "
        "split evenly). Many machines: run torchrun yourself, see docs/distributed.md.",
    ),
):
    """Train a model (images; texts with run.task=text_classify); writes runs/NAME/ (config, metrics, checkpoints,
    model package)."""
    path, overrides = _split_config(config, overrides)
    from modelcycle.config import load_config

    cfg = load_config(path, overrides)
    if nproc is not None:
        from modelcycle.engine import launch

        launch.check(cfg, nproc)
        if nproc > 1:  # the same command, minus --nproc, in each process
            flags = ["--resume"] * resume + ["--overwrite"] * overwrite
            raise typer.Exit(launch.launch(["train", *([path] if path else []), *overrides, *flags], nproc))
    from modelcycle.api import train as run_train

    run = run_train(cfg, resume=resume, overwrite=overwrite)
    best = run.epoch_metrics()
    summary = ""
    if best:
        last = best[-1]
        summary = "  ".join(f"{k}={last[k]:.4f}" for k in ("val_accuracy", "val_loss") if k in last)
    info(f"run {run.path}: model package in {run.model_dir}  {summary}")


@app.command()
def distill(
    teacher: Path = typer.Argument(..., help="The teacher: a run folder (runs/flowers) or its model package."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    student: str = typer.Option(..., "--student", help="Student model: a registry name or file.py:build."),
    out: Path = typer.Option(..., "--out", help="The student's run folder (runs/flowers-small)."),
    temperature: float | None = typer.Option(None, help="Softening temperature T (distill.temperature, default 4)."),
    alpha: float | None = typer.Option(None, help="Weight of the teacher's soft targets (distill.alpha, default 0.9)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted distillation in OUT."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing run folder OUT first."),
):
    """Train a smaller student from a teacher run (KL on softened logits + label loss), on its recipe."""
    from modelcycle.api import distill as run_distill
    from modelcycle.runs import read_manifest

    flags = [f"distill.{k}={v}" for k, v in (("temperature", temperature), ("alpha", alpha)) if v is not None]
    run = run_distill(teacher, student, out, [*flags, *(overrides or [])], resume=resume, overwrite=overwrite)
    manifest = read_manifest(run.model_dir)
    record, metrics = manifest["distillation"], manifest.get("metrics", {})
    teacher_acc = metrics.get("val_teacher_accuracy", record.get("teacher_val_accuracy"))
    table = Table(title=f"distilled at T={record['temperature']:g}, alpha={record['alpha']:g}")
    for column in ("", "model", "parameters", "val_accuracy"):
        table.add_column(column, justify="left" if column in ("", "model") else "right")
    for role, name, params, acc in (
        ("teacher", record["teacher_architecture"]["name"], record["teacher_parameters"], teacher_acc),
        ("student", manifest["architecture"]["name"], record["student_parameters"], metrics.get("val_accuracy")),
    ):
        table.add_row(role, name, f"{params:,}", "-" if acc is None else f"{acc:.4f}")
    console.print(table)
    agreement = metrics.get("val_agreement")
    info(
        f"run {run.path}: model package in {run.model_dir}"
        + (f"  top-1 agreement with the teacher {agreement:.4f}" if agreement is not None else "")
    )


def _is_reward(run: Path) -> bool:
    from modelcycle import runs

    try:
        return runs.read_manifest(run).get("task") == "reward"
    except UserError:
        return False


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run folder (runs/NAME) or a model package."),
    split: str = typer.Option("val", help="Split of the run's data: val or test (or train)."),
    data: Path | None = typer.Option(
        None, help="A manifest (images) or a JSONL file of texts and labels to evaluate on instead of a split."
    ),
    backend: str = typer.Option("auto", help=BACKEND_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
    against: Path | None = typer.Option(
        None, help="A baseline policy (run or model folder): compare RUN's answers to its on held-out prompts."
    ),
    reward: Path | None = typer.Option(None, help="With --against: the reward run that judges (default: PPO's own)."),
    samples: int = typer.Option(4, min=1, help="With --against: answers each policy samples to each held-out prompt."),
):
    """Accuracy, top-5, per-class precision/recall/F1 and a report with plots in RUN/report/ (images or texts);
    pairwise accuracy for a reward model; win rate, rewards and KL of a policy with --against."""
    from modelcycle.api import evaluate as run_evaluate

    if against is not None or _is_reward(run):
        from modelcycle.cli_lm import show_policy_evaluation

        return show_policy_evaluation(run, against, reward, data, samples, as_json)
    metrics = run_evaluate(run, split=split, data=data, backend=backend)
    if "perplexity" in metrics:  # a language model: perplexity, answer loss, sample answers
        from modelcycle.cli_lm import show_lm_metrics

        show_lm_metrics(run, metrics, as_json)
        return
    if as_json:
        keys = (
            "accuracy",
            "top5",
            "macro_f1",
            "weighted_f1",
            "macro_precision",
            "macro_recall",
            "weighted_precision",
            "weighted_recall",
            "num_samples",
            "split",
            "backend",
            "per_class",
        )
        stdout.print_json(json.dumps({k: metrics[k] for k in keys}))
        return
    noun = "texts" if metrics.get("task") == "text_classify" else "images"
    table = Table(title=f"{run} on {metrics['split']} ({metrics['num_samples']} {noun})")
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, m in metrics["per_class"].items():
        table.add_row(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    for avg in ("macro", "weighted"):
        table.add_row(
            f"[bold]{avg} avg",
            f"{metrics[avg + '_precision']:.3f}",
            f"{metrics[avg + '_recall']:.3f}",
            f"{metrics[avg + '_f1']:.3f}",
            str(metrics["num_samples"]),
        )
    console.print(table)
    info(
        f"accuracy {metrics['accuracy']:.4f}  top-{metrics['topk']} {metrics['top5']:.4f}  "
        f"macro F1 {metrics['macro_f1']:.4f}\nreport: {metrics['report']}"
    )


@app.command()
def predict(
    run: Path = typer.Argument(..., help="A run folder or a model package."),
    inputs: list[str] = typer.Argument(..., help="Image files; for a text classifier, texts (quote each one)."),
    topk: int = typer.Option(5, help="How many classes to show per input."),
    backend: str = typer.Option("auto", help=BACKEND_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per input per line."),
):
    """Top-k classes with probabilities for each image (or each text, for a text classifier)."""
    from modelcycle.api import predict as run_predict

    for result in run_predict(run, inputs, topk=topk, backend=backend):
        if as_json:
            print(json.dumps(result))
        else:
            ranked = escape(", ".join(f"{t['label']} {t['probability']:.3f}" for t in result["topk"]))
            shown = result["path"] if "path" in result else _excerpt(result["text"])
            stdout.print(
                f"{escape(shown)}: [bold]{escape(result['label'])}[/bold] ({result['probability']:.3f})  top: {ranked}",
                highlight=False,
            )


def _excerpt(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 1] + "…")


@app.command()
def export(
    run: Path = typer.Argument(..., help="A run folder or a model package."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (ONNX Runtime, any language) or torchscript (C++)."),
    opset: int = typer.Option(18, help="ONNX opset (recorded in modelcycle.json)."),
    data: Path | None = typer.Option(None, help="Manifest of images for the parity check (default: the val split)."),
    images: int = typer.Option(64, help="How many validation images the parity check uses."),
):
    """Add an ONNX or TorchScript file to the model package, checked against PyTorch on real images."""
    from modelcycle.export.export import export as run_export

    record = run_export(run, fmt, opset=opset, data=data, count=images)
    parity = record["parity"]
    info(
        f"{fmt}: {record['file']} ({record['bytes'] / 1e6:.1f} MB) matches PyTorch on {parity['images']} images: "
        f"max probability difference {parity['max_abs_diff']:.1e}, top-1 agreement {parity['top1_agreement']:.1%}"
    )


@app.command()
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
    from modelcycle.compress.quantize import quantize_int8

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
    from modelcycle.compress.prune import RECALIBRATE, prune_model

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


@app.command()
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
    from modelcycle.config import load_config
    from modelcycle.serve.server import serve as run_server

    settings = [m for m in models if m.split("=", 1)[0].startswith(("serve.", "monitor."))]
    specs = [m for m in models if m not in settings]
    if not specs:
        raise UserError("no model to serve; pass a run folder such as runs/digits-demo")
    options = {"host": host, "port": port, "backend": backend, "api_key_env": api_key_env}
    settings += [f"serve.{k}={v}" for k, v in options.items() if v is not None]
    settings += [f"monitor.dir={monitor}"] if monitor is not None else []
    cfg = load_config(config, settings)
    run_server(specs, cfg.serve, cfg.monitor)


@app.command("monitor")
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
    window: int | None = typer.Option(None, help="Images per window (monitor.window, default 500)."),
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
    info(f"report: {summary['report']}")


@app.command()
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


@app.command()
def bench(
    runs: list[Path] = typer.Argument(..., help="Run folders or model packages (an int8 package too)."),
    min_accuracy: float | None = typer.Option(None, help="Exit 1 if any validated backend scores below this."),
    data: Path | None = typer.Option(None, help="Manifest to measure on (default: each package's val split)."),
    seconds: float = typer.Option(2.0, help="Seconds of batch-32 calls per throughput figure."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
):
    """Accuracy, size, latency (batch 1) and throughput (batch 32) per package and backend."""
    from modelcycle.evaluation.bench import MEASURED
    from modelcycle.evaluation.bench import bench as run_bench

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


@app.command("runs")
def list_runs(
    folder: Path = typer.Argument(
        Path("runs"),
        help="Folder of run folders (run.dir). Runs nested below (study trials, crossval folds) count too.",
    ),
    sort: str | None = typer.Option(
        None,
        help="Rank by this metric (val_loss, train_loss, val_top5...; a loss lowest first), or by 'date' (newest "
        "first) or 'name'. Default: the metric the runs monitor (train.monitor), in its train.monitor_mode.",
    ),
    show_all: bool = typer.Option(False, "--all", help="Also list the folders that hold no run."),
    as_json: bool = typer.Option(False, "--json", help="Print the runs as one JSON list (for scripts)."),
):
    """Table of the runs under FOLDER, best first: best metric and its epoch, status (finished, interrupted,
    failed, running), epochs, start, duration, and the settings that differ between the runs."""
    from modelcycle.track.listing import list_runs as find
    from modelcycle.track.tables import others_table, runs_table

    listing = find(folder, sort=sort)
    if as_json:
        rows = [s.to_json(listing.metric, listing.mode) for s in listing.runs]
        rows += [{"run": p.relative_to(folder).as_posix(), "status": "not a run"} for p in listing.others if show_all]
        print(json.dumps(rows))
        return
    if not listing.runs:
        info(f"no runs in {folder}/; `modelcycle train CONFIG` writes one (run.dir={folder})")
    else:
        order = "newest first" if sort == "date" else "by name" if sort == "name" else "best first"
        console.print(
            runs_table(listing.runs, listing.metric, listing.mode, f"{folder}: {len(listing.runs)} runs, {order}")
        )
    if listing.others and show_all:
        console.print(others_table(listing.others, folder))
    elif listing.others:
        names = ", ".join(p.relative_to(folder).as_posix() for p in listing.others)
        info(f"{len(listing.others)} folder(s) hold no run and are not listed (--all lists them): {names}")


@app.command()
def compare(
    runs: list[Path] = typer.Argument(
        ..., help="Run folders (runs/a runs/b ...); a folder of runs stands for all of them."
    ),
    metric: str | None = typer.Option(
        None, help="Metric for the third plot and the 'best' column (default: the metric the runs monitor)."
    ),
    out: Path = typer.Option(Path("compare.png"), "--out", help="PNG to write."),
    as_json: bool = typer.Option(False, "--json", help="Print the runs' figures as JSON instead of a table."),
):
    """Plot the runs' train loss, val loss, val accuracy (or --metric) and learning rate against the epoch
    in one PNG, and print their best and last figures with the settings that differ."""
    from modelcycle.track.compare import compare as run_compare
    from modelcycle.track.tables import runs_table

    result = run_compare(runs, out=out, metric=metric)
    if as_json:
        print(json.dumps([s.to_json(result.metric, result.mode) for s in result.runs]))
    else:
        console.print(runs_table(result.runs, result.metric, result.mode, f"{len(result.runs)} runs", final=True))
    info(f"curves: {result.png}")


@app.command()
def crossval(
    config: str = typer.Argument(..., help="YAML recipe."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    folds: int = typer.Option(5, help="Number of stratified folds."),
):
    """k-fold cross-validation over train+val; prints mean and std of each metric."""
    from modelcycle.api import crossval as run_crossval

    path, overrides = _split_config(config, overrides)
    summary = run_crossval(path, overrides, folds=folds)
    table = Table(title=f"{folds}-fold cross-validation ({summary['runs']})")
    table.add_column("metric")
    for i in range(folds):
        table.add_column(f"fold {i}", justify="right")
    table.add_column("mean ± std", justify="right")
    for key, mean in summary["mean"].items():
        table.add_row(key, *[f"{f[key]:.4f}" for f in summary["per_fold"]], f"{mean:.4f} ± {summary['std'][key]:.4f}")
    console.print(table)


@app.command()
def tune(
    config: str = typer.Argument(..., help="YAML recipe (configs/digits.yaml) or a first key=value override."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    space: Path | None = typer.Option(
        None, help="Search space YAML: dotted config keys, each float/int/categorical (see configs/space.yaml)."
    ),
    trials: int | None = typer.Option(
        None, help="Finished trials the study should have (default 20); run again with more to extend it."
    ),
    sampler: str | None = typer.Option(None, help="tpe (default), random, or grid (every float range needs a step)."),
    pruner: str | None = typer.Option(
        None, help="median (default: stop trials behind the median at the same epoch), hyperband, or none."
    ),
    storage: str | None = typer.Option(
        None,
        help="Database URL shared by the workers (default sqlite:///RUN_DIR/STUDY/study.db); on several machines "
        "a server, e.g. postgresql://user:password@host:5432/optuna.",
    ),
    workers: int | None = typer.Option(None, help="Processes on this machine working on the study (default 1)."),
    study: str | None = typer.Option(None, help="Study name (default RUN_NAME-tune); trials go to RUN_DIR/STUDY/."),
):
    """Search hyperparameters with Optuna; each trial is a run folder RUN_DIR/STUDY/trial-NNNN.

    The study is kept in a database, so the same command again continues it. RUN_DIR/STUDY/ gets
    study.md, history.png, importance.png and best.yaml (modelcycle train RUN_DIR/STUDY/best.yaml).
    Example: modelcycle tune configs/digits.yaml --space configs/space.yaml --trials 30 --workers 2
    """
    from modelcycle.api import tune as run_tune

    path, overrides = _split_config(config, overrides)
    result = run_tune(
        path,
        space,
        overrides,
        trials=trials,
        sampler=sampler,
        pruner=pruner,
        storage=storage,
        workers=workers,
        study=study,
    )
    keys = list(result.top[0]["params"]) if result.top else []
    table = Table(title=f"study {result.study}: best trials ({result.direction} {result.monitor})")
    for column in ("trial", result.monitor, *keys, "epochs", "run"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in result.top:
        params = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in (row["params"].get(k) for k in keys)]
        table.add_row(str(row["number"]), f"{row['value']:.4f}", *params, str(row["epochs"]), str(row["run"]))
    if result.top:
        console.print(table)
    best = f"; best config {result.folder / 'best.yaml'}" if result.top else ""
    info(f"{result.finished} trials finished; report {result.report}{best}")


from modelcycle.cli_lm import lm_app  # noqa: E402  (after app: the sub-app's module needs nothing of this one)

app.add_typer(lm_app, name="lm")


def main() -> None:
    try:
        app()
    except UserError as exc:
        code = getattr(exc, "exit_code", 2)
        rank = int(os.environ.get("RANK", "0"))  # under torchrun: rank 0 alone reports a stop by Ctrl-C
        if rank == 0 or code != 130:
            console.quiet = False
            console.print(Text.assemble((f"rank {rank}: " * (rank > 0) + "error: ", "bold red"), str(exc)))
        sys.exit(code)
    except RuntimeError as exc:  # gloo's words when another training process has died: it said why
        if os.environ.get("RANK", "0") == "0" or "closed by peer" not in str(exc):
            raise
        console.quiet = False
        console.print(f"rank {os.environ['RANK']}: stopped because another training process failed (see its error)")
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        sys.exit(130)


if __name__ == "__main__":
    main()
