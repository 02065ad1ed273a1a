"""The public Python API; every CLI verb is a thin call into one of these."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelcycle import runs
from modelcycle.compress.prune import prune_model, refuse_plain_resume
from modelcycle.config import Config, load_config
from modelcycle.data.demo import write_digits
from modelcycle.data.prepare import PrepareResult
from modelcycle.data.prepare import prepare as _prepare
from modelcycle.engine import checkpoint
from modelcycle.engine.trainer import Trainer
from modelcycle.evaluation.crossval import crossval
from modelcycle.evaluation.evaluate import evaluate
from modelcycle.evaluation.predict import predict
from modelcycle.export.export import export as export_model
from modelcycle.progress import warn
from modelcycle.runs import Run
from modelcycle.tasks import classify
from modelcycle.tasks import distill as distillation

if TYPE_CHECKING:
    from modelcycle.tuning.search import TuneResult

__all__ = [
    "prepare",
    "train",
    "distill",
    "evaluate",
    "predict",
    "crossval",
    "export_model",
    "prune_model",
    "write_digits",
    "load_config",
    "tune",
    "Run",
]


def prepare(src: str | Path, out: str | Path, val: float = 0.2, test: float = 0.0, seed: int = 0) -> PrepareResult:
    """Scan a folder of class folders (or a manifest), verify images, write a stratified split."""
    return _prepare(src, out, val=val, test=test, seed=seed)


def train(
    config: Config | str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: list | None = None,
    train_items=None,
    val_items=None,
) -> Run:
    """Train a classifier; returns the run folder with checkpoints, metrics and model package."""
    if not isinstance(config, Config):
        config = load_config(config, overrides)
    elif overrides:
        config = load_config(None, overrides, base=config.model_dump())
    run_dir = runs.check_run_dir(config, resume=resume or overwrite)
    if resume:
        refuse_plain_resume(run_dir, callbacks)  # a pruned fine-tune resumes through `compress --resume`
    parts = classify.setup(config, train_items, val_items)
    meta = {
        "task": "classify",
        "backend": "torch",
        "architecture": _portable(parts.model_spec),
        "classes": parts.data.classes,
        "preprocessing": parts.preprocessing,
        "data_root": str(parts.data.root.resolve()),
    }
    if config.distill.teacher:  # the model learns from a teacher's logits too (see `distill` below)
        parts, meta["distillation"] = distillation.attach(config, parts)
    trainer = Trainer(
        parts.task,
        parts.model,
        parts.train_loader,
        parts.val_loader,
        config.train,
        run_dir,
        callbacks=callbacks,
        meta=meta,
        progress=progress,
    )
    # data, model and settings are all checked by now: only then does the run folder appear
    if resume and (changes := runs.config_changes(run_dir, config)):
        warn(
            "resuming with changed settings, so the result will differ from an uninterrupted run: " + "; ".join(changes)
        )
    runs.make_run_dir(run_dir, config, overwrite=overwrite and not resume)
    state = trainer.fit(resume=resume)
    run = Run(run_dir)
    _write_package(run, meta, state.best_epoch, config)
    return run


def distill(
    teacher: str | Path,
    student: str,
    out: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: list | None = None,
) -> Run:
    """Train the architecture ``student`` from the ``teacher`` run (a run folder or its package)
    into the run folder ``out``, on the teacher's recipe; returns an ordinary classify run whose
    package also records the distillation (``distill.temperature=2`` and the like as overrides)."""
    config = distillation.student_config(teacher, student, out, overrides)
    return train(config, resume=resume, overwrite=overwrite, progress=progress, callbacks=callbacks)


def tune(
    config: Config | str | Path | None,
    space: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    trials: int | None = None,
    sampler: str | None = None,
    pruner: str | None = None,
    storage: str | None = None,
    workers: int | None = None,
    study: str | None = None,
) -> TuneResult:
    """Search hyperparameters of the recipe ``config`` over the ``space`` file with Optuna; each
    trial is a run folder ``RUN_DIR/STUDY/trial-NNNN`` and ``RUN_DIR/STUDY/`` holds the report.
    Arguments left None come from the recipe's ``tune:`` section (docs/tune.md); running it again
    continues the study up to ``trials``. Returns a ``TuneResult`` (best value, params, run, report)."""
    from modelcycle.tuning.search import tune as run_tune  # optuna and sqlalchemy load only when tuning

    given = {"space": space, "trials": trials, "sampler": sampler, "pruner": pruner, "storage": storage}
    given |= {"workers": workers, "study": study}
    flags = [*overrides, *(f"tune.{k}={v}" for k, v in given.items() if v is not None)]
    if isinstance(config, Config):
        config = load_config(None, flags, base=config.model_dump()) if flags else config
    else:
        config = load_config(config, flags)
    return run_tune(config)


def _portable(spec: dict) -> dict:
    """A user's model file is recorded by absolute path so the package works from any folder."""
    name = spec["name"]
    if ":" in name and name.split(":", 1)[0].endswith(".py"):
        file, func = name.rsplit(":", 1)
        spec = {**spec, "name": f"{Path(file).resolve()}:{func}"}
    return spec


def _write_package(run: Run, meta: dict, best_epoch: int, config: Config) -> None:
    best = run.checkpoints / "best.pt"
    source = best if best.exists() else run.checkpoints / "last.pt"
    ck = checkpoint.load(source)
    weights = ck["ema"]["model"] if ck.get("ema") else ck["model"]
    epochs = run.epoch_metrics()
    chosen = next((m for m in epochs if m["epoch"] == best_epoch), epochs[-1] if epochs else {})
    runs.write_package(
        run.model_dir,
        weights,
        {
            **meta,
            "metrics": {k: v for k, v in chosen.items() if isinstance(v, float | int)},
            "source_run": str(run.path.resolve()),
            "checkpoint": source.name,
            "monitor": config.train.monitor,
        },
    )
