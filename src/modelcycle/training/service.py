"""The training service: a config in, a finished run folder out. Every way of training (``train``,
``distill``, each ``tune`` trial, each ``crossval`` fold, a pruned model's fine-tuning) goes
through :func:`train` here, below the public API that re-exports it."""

from __future__ import annotations

from pathlib import Path

from modelcycle import runs
from modelcycle.compress.masks import refuse_plain_resume
from modelcycle.config import Config, load_config
from modelcycle.engine import distributed
from modelcycle.engine.run_context import RunContext
from modelcycle.engine.trainer import Trainer
from modelcycle.errors import UserError
from modelcycle.models import transfer
from modelcycle.runs import Run
from modelcycle.tasks import classify, text_classify
from modelcycle.tasks import distill as distillation
from modelcycle.training.package import portable, write_run_package


def train(
    config: Config | str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: list | None = None,
    train_items=None,
    val_items=None,
    nproc: int | None = None,
) -> Run:
    """Train a classifier (images, or texts with ``run.task=text_classify``); returns the run folder
    with checkpoints, metrics and model package.

    ``nproc=N`` trains on N processes of this machine (DDP or FSDP through torchrun, with
    ``train.batch_size`` as the global batch); see docs/distributed.md. Under torchrun, every
    process calls this and rank 0 writes the run folder."""
    if not isinstance(config, Config):
        config = load_config(config, overrides)
    elif overrides:
        config = load_config(None, overrides, base=config.model_dump())
    if nproc is not None and (nproc != 1 or distributed.launched()):
        from modelcycle.engine import launch

        if callbacks or train_items is not None or val_items is not None:
            raise UserError("nproc: callbacks, train_items and val_items cannot be sent to other processes")
        return Run(launch.train(config, nproc, resume=resume, overwrite=overwrite))
    if resume:  # a pruned fine-tune resumes through `compress --resume`
        refuse_plain_resume(Path(config.run.dir) / config.run.name, callbacks)
    # joins torchrun's process group, checks the run folder, sets up tracking: all before any work
    ctx = RunContext.open(config, resume=resume, overwrite=overwrite, callbacks=callbacks)
    run_dir = ctx.run_dir
    parts, meta, package, tuning = _task_setup(config, run_dir, resume, progress, train_items, val_items)
    trainer = Trainer(
        ctx,
        parts.task,
        parts.model,
        parts.train_loader,
        parts.val_loader,
        config.train,
        callbacks=tuning.callbacks,
        meta=meta,
        progress=progress and distributed.is_main(),
    )
    with ctx.folder():  # data, model and settings are all checked by now: only then does the folder appear
        tuning.report(trainer.event, show=progress and distributed.is_main())
        state = trainer.fit(resume=resume)
        run = Run(run_dir)
        if distributed.is_main():
            write_run_package(run, meta, state, config, package)
        ctx.finish(run)
        distributed.barrier()  # every rank returns a finished run
    return run


def _task_setup(config: Config, run_dir: Path, resume: bool, progress: bool, train_items, val_items):
    """The task's data, model and step, its package metadata and writer, and what fine-tuning
    (``model.init_from``, ``model.freeze``, ``train.unfreeze_at_epoch``) did to the model."""
    if config.run.task in ("lm", "sft"):
        if train_items is not None or val_items is not None:
            raise UserError("cross-validation takes image runs only; language-model runs train on lm.train_files")
        parts = language_model_setup(config)
        return parts, parts.meta, parts.write_package, transfer.FineTuning(None, [], parts.callbacks)
    if config.run.task == "ppo":
        raise UserError("run.task=ppo trains in its own loop: `modelcycle lm ppo CONFIG policy=RUN reward=RUN`")
    if config.run.task in ("reward", "dpo"):  # preference pairs: tasks/reward.py, tasks/dpo.py
        if train_items is not None or val_items is not None:
            raise UserError("cross-validation takes image runs only; reward and dpo runs train on data.root")
        parts = preference_setup(config)
        return parts, parts.meta, parts.write_package, transfer.FineTuning(None, [], [])
    if config.run.task == "text_classify":
        if train_items is not None or val_items is not None:
            raise UserError("cross-validation takes image runs only; run.task=text_classify trains on data.root")
        parts = text_classify.setup(config)  # applies model.freeze or LoRA itself
        tuning = transfer.FineTuning(None, [], transfer.unfreeze_callbacks(config, progress))
        return parts, parts.meta, parts.write_package, tuning  # the Hugging Face layout
    parts = classify.setup(config, train_items, val_items)
    meta = {
        "task": "classify",
        "backend": "torch",
        "architecture": portable(parts.model_spec),
        "classes": parts.data.classes,
        "preprocessing": parts.preprocessing,
        "data_root": str(parts.data.root.resolve()),
    }
    if config.distill.teacher:  # the model learns from a teacher's logits too (see `distill` below)
        parts, meta["distillation"] = distillation.attach(config, parts)
    tuning = transfer.prepare(config, parts.model, parts.data.classes, parts.preprocessing, run_dir, resume, progress)
    if tuning.record:
        meta["init_from"] = tuning.record
    return parts, meta, runs.write_package, tuning


def preference_setup(config: Config):
    from modelcycle.tasks import dpo, reward

    return (reward if config.run.task == "reward" else dpo).setup(config)


def language_model_setup(config: Config):
    """Pretraining (run.task=lm) or SFT (run.task=sft): tasks/lm.py, tasks/sft.py."""
    from modelcycle.tasks import lm, sft

    return (lm if config.run.task == "lm" else sft).setup(config)


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
