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

from modelcycle.cli_common import BACKEND_HELP, OVERRIDES_HELP, split_config
from modelcycle.cli_help import plain_help
from modelcycle.errors import UserError
from modelcycle.progress import console, info, stdout

plain_help()  # --resume, not --resume <bool>; train CONFIG, not train {config}
app = typer.Typer(
    help="modelcycle: take a model from raw data (an image folder, or JSONL texts) to an evaluated, resumable, "
    "packaged model.\n\n"
    "Typical flow: datasets/prepare -> inspect -> train -> evaluate -> predict -> export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _everywhere(
    trust_code: bool = typer.Option(
        False,
        "--trust-code",
        help="Allow model packages whose architecture is a Python file (path/to/file.py:build) to run that file. "
        "Off by default: a package from someone else must not run code on your machine. Put it before the verb "
        "(modelcycle --trust-code predict ...); the same as MODELCYCLE_TRUST_CODE=1.",
    ),
) -> None:
    if trust_code:  # the environment carries it to serve's and torchrun's child processes
        os.environ["MODELCYCLE_TRUST_CODE"] = "1"


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
    dedupe: bool = typer.Option(
        False,
        "--dedupe",
        help="Keep one file of each group of identical images (none of a group whose copies sit in different "
        "class folders). Without it every group is kept whole in one split.",
    ),
    near_duplicates: bool = typer.Option(
        False, "--near-duplicates", help="Also list look-alike images (a perceptual hash) in duplicates.json."
    ),
):
    """Verify every image and write a stratified, reproducible split (unreadable files -> rejected.txt,
    identical files -> duplicates.json, kept in one split)."""
    from modelcycle.api import prepare as run_prepare

    result = run_prepare(src, out, val=val, test=test, seed=seed, dedupe=dedupe, near_duplicates=near_duplicates)
    found = result.stats["duplicates"]
    table = Table(
        title=f"{out}: {result.stats['num_images']} images, {len(result.rejected)} rejected, "
        f"{found['groups']} duplicate groups ({found['files']} files, {found['conflict_groups']} label conflicts"
        + (f", {found['dropped']} dropped)" if dedupe else ")")
    )
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
        "split evenly over all processes of all machines).",
    ),
    nnodes: int = typer.Option(
        1,
        "--nnodes",
        help="Machines that train together: run this same command on each, with --rdzv-endpoint "
        "(see docs/distributed.md).",
    ),
    rdzv_endpoint: str | None = typer.Option(
        None,
        "--rdzv-endpoint",
        help="HOST:PORT where the machines of --nnodes meet: one of them, reachable from all, and a free port there.",
    ),
):
    """Train a model (images; texts with run.task=text_classify); writes runs/NAME/ (config, metrics, checkpoints,
    model package)."""
    path, overrides = split_config(config, overrides)
    from modelcycle.config import load_config

    cfg = load_config(path, overrides)
    if nproc is not None or nnodes != 1 or rdzv_endpoint:
        from modelcycle.engine import launch

        nproc = 1 if nproc is None else nproc
        launch.check(cfg, nproc, nnodes, rdzv_endpoint)
        if nproc > 1 or nnodes > 1:  # the same command, minus --nproc and --nnodes, in each process
            flags = ["--resume"] * resume + ["--overwrite"] * overwrite
            argv = ["train", *([path] if path else []), *overrides, *flags]
            job = launch.job_id(cfg) if nnodes > 1 else None
            raise typer.Exit(launch.launch(argv, nproc, nnodes, rdzv_endpoint, job))
    from modelcycle.api import train as run_train

    run = run_train(cfg, resume=resume, overwrite=overwrite)
    from modelcycle.tasks import registry

    best = run.epoch_metrics()
    summary = ""
    if best:
        last = best[-1]
        shown = registry.get(cfg.run.task).summary_metrics
        summary = "  ".join(f"{k}={last[k]:.4f}" for k in shown if k in last and isinstance(last[k], int | float))
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


def _plugin(run: Path):
    """The task plugin of a run or package, None when it cannot be read (evaluate then says why)."""
    from modelcycle.tasks import registry

    try:
        return registry.for_package(run)
    except UserError:
        return None


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
    from modelcycle.evaluation.metrics import top5_label

    plugin = _plugin(run)
    view = plugin.view if plugin else "classification"
    if against is not None or view == "pairs":
        from modelcycle.cli_lm import show_policy_evaluation

        return show_policy_evaluation(run, against, reward, data, samples, as_json)
    metrics = run_evaluate(run, split=split, data=data, backend=backend)
    if view == "language_model":  # a language model: perplexity, answer loss, sample answers
        from modelcycle.cli_lm import show_lm_metrics

        show_lm_metrics(run, metrics, as_json)
        return
    if view == "metrics":  # a task's own evaluation: its figures as they are
        stdout.print_json(json.dumps(metrics, default=str))
        return
    if as_json:
        keys = (
            "accuracy",
            "top5",
            "topk",  # the k of top5: min(eval.topk, classes)
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
    noun = "images" if plugin is None or plugin.package_kind == "vision" else "texts"
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
        f"accuracy {metrics['accuracy']:.4f}  {top5_label(metrics['topk'], len(metrics['per_class']))} "
        f"{metrics['top5']:.4f}  "
        f"macro F1 {metrics['macro_f1']:.4f}\nreport: {metrics['report']}"
    )


@app.command()
def predict(
    run: Path = typer.Argument(..., help="A run folder or a model package."),
    inputs: list[str] = typer.Argument(
        ...,
        help='Image files, folders (their image files, recursed) and globs (quote them: "photos/**/*.jpg"); '
        "for a text classifier, texts (quote each one).",
    ),
    topk: int = typer.Option(5, help="How many classes to show per input."),
    backend: str = typer.Option("auto", help=BACKEND_HELP),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Inputs run through the model at once (default: 32 images, 64 texts)."
    ),
    as_json: bool = typer.Option(False, "--json", help='One JSON object per input per line; failures carry "error".'),
):
    """Top-k classes with probabilities for each image (or each text, for a text classifier). A file that
    cannot be read gets an error line of its own and the others are still answered; exit code 1 if any failed."""
    from modelcycle.api import iter_predict

    answered = failed = 0
    for result in iter_predict(run, inputs, topk=topk, backend=backend, batch_size=batch_size, progress=True):
        failed += "error" in result
        answered += "error" not in result
        if as_json:
            print(json.dumps(result), flush=True)
        elif "error" in result:
            stdout.print(
                f"{escape(result['path'])}: [bold red]error[/bold red] {escape(result['error'])}", highlight=False
            )
        else:
            ranked = escape(", ".join(f"{t['label']} {t['probability']:.3f}" for t in result["topk"]))
            shown = result["path"] if "path" in result else _excerpt(result["text"])
            stdout.print(
                f"{escape(shown)}: [bold]{escape(result['label'])}[/bold] ({result['probability']:.3f})  top: {ranked}",
                highlight=False,
            )
    info(f"{answered} answered, {failed} failed")
    if failed:
        raise typer.Exit(1)


def _excerpt(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 1] + "…")


from modelcycle import cli_deploy, cli_runs, cli_ui  # noqa: E402  (their verbs; registered here, so --help lists them in order)

app.command()(cli_deploy.export)
app.command()(cli_deploy.compress)
app.command()(cli_deploy.serve)
app.command("monitor")(cli_deploy.monitor_log)
app.command()(cli_deploy.profile)
app.command()(cli_deploy.bench)
app.command("runs")(cli_runs.list_runs)
app.command()(cli_runs.compare)
app.command()(cli_runs.crossval)
app.command()(cli_runs.tune)
app.command()(cli_ui.ui)


from modelcycle.cli_config import config_app  # noqa: E402
from modelcycle.cli_lm import lm_app  # noqa: E402  (after app: the sub-app's module needs nothing of this one)

app.add_typer(lm_app, name="lm")
app.add_typer(config_app, name="config")


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
