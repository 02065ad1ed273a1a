"""The training service: a config in, a finished run folder out. Every way of training (``train``,
``distill``, each ``tune`` trial, each ``crossval`` fold, a pruned model's fine-tuning) goes
through :func:`train` here, below the public API that re-exports it."""

from __future__ import annotations

from pathlib import Path

from modelcycle.compress.masks import refuse_plain_resume
from modelcycle.config import Config, load_config
from modelcycle.engine import distributed
from modelcycle.engine.run_context import RunContext
from modelcycle.engine.trainer import Trainer
from modelcycle.errors import UserError
from modelcycle.models import transfer
from modelcycle.runs import Run
from modelcycle.tasks import distill as distillation
from modelcycle.tasks import registry
from modelcycle.tasks.plugin import SetupContext
from modelcycle.tasks.ppo_setup import ppo_config
from modelcycle.track.mlflow import MlflowTracker
from modelcycle.training.package import write_run_package


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
    elif overrides:  # what the caller left unset stays unset, for the task's defaults
        config = load_config(None, overrides, base=config.model_dump(exclude_unset=True))
    config = registry.apply_defaults(config)  # the task is known (a ConfigError names the known ones)
    registry.check_reads(config)  # a key the task does not read is an error, not ignored
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
    _tracking_capabilities(ctx.tracking, config)
    if (plugin := registry.for_config(config)).loop is not None:
        return _own_loop(plugin, ctx, config, resume, progress, train_items, val_items)
    parts, meta, package, tuning = _task_setup(config, run_dir, resume, progress, train_items, val_items)
    recorder = _profile_recorder(config, parts)
    trainer = Trainer(
        ctx,
        parts.task,
        parts.model,
        parts.train_loader,
        parts.val_loader,
        config.train,
        callbacks=[*tuning.callbacks, *([recorder] if recorder else [])],
        meta=meta,
        progress=progress and distributed.is_main(),
    )
    with ctx.folder():  # data, model and settings are all checked by now: only then does the folder appear
        tuning.report(trainer.event, show=progress and distributed.is_main())
        state = trainer.fit(resume=resume)
        run = Run(run_dir)
        if distributed.is_main():
            write_run_package(run, meta, state, config, package, recorded=recorder)
        ctx.finish(run)
        distributed.barrier()  # every rank returns a finished run
    return run


def _profile_recorder(config: Config, parts):
    """For a task whose packages get a monitoring profile: the callback that keeps the validation
    pass's outputs, so that the profile needs no pass of its own (monitor/profile_recorder.py)."""
    items = getattr(getattr(parts.val_loader, "dataset", None), "items", None)
    if not registry.for_config(config).can("monitor_profile") or items is None or "preprocessing" not in parts.meta:
        return None
    from modelcycle.monitor.profile_recorder import ValidationRecorder

    return ValidationRecorder(items, parts.meta["preprocessing"], config.monitor.profile_images)


def _task_setup(config: Config, run_dir: Path, resume: bool, progress: bool, train_items, val_items):
    """The task plugin's parts (data, model, step, callbacks), its package metadata and writer, and
    what setup did to the model (``model.init_from``, ``model.freeze``) for the run's events."""
    plugin = registry.for_config(config)
    if (train_items is not None or val_items is not None) and not plugin.can("crossval"):
        raise UserError(
            f"cross-validation takes image runs only; run.task={plugin.name} trains on the data its config names"
        )
    if plugin.setup is None:
        raise UserError(f"run.task={plugin.name}: its plugin gives neither a setup nor a loop of its own to train with")
    parts = plugin.setup(config, SetupContext(run_dir, resume, progress, train_items, val_items))
    return parts, parts.meta, parts.write_package, transfer.FineTuning(None, list(parts.notes), list(parts.callbacks))


def _own_loop(plugin, ctx: RunContext, config: Config, resume: bool, progress: bool, train_items, val_items) -> Run:
    """A task that trains in a loop of its own (``plugin.loop``), on the same run context."""
    if train_items is not None or val_items is not None:
        raise UserError(f"cross-validation takes image runs only; run.task={plugin.name} runs its own loop")
    loop = plugin.loop(ctx, config, progress=progress and distributed.is_main())
    with ctx.folder():  # its setup has checked data, models and settings: only now does the folder appear
        loop.fit(resume=resume)
        run = Run(ctx.run_dir)
        if distributed.is_main():
            loop.write_package(run)
        ctx.finish(run)
        distributed.barrier()
    return run


def train_ppo(
    config: Config | str | Path | None,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: list | None = None,
) -> Run:
    """``modelcycle lm ppo``: :func:`train` with ``run.task=ppo`` and ``policy=RUN`` / ``reward=RUN``
    as short forms of ``ppo.policy`` / ``ppo.reward``; the run's ``model/`` is the tuned policy."""
    config = ppo_config(config, overrides)
    return train(config, resume=resume, overwrite=overwrite, progress=progress, callbacks=callbacks)


def _tracking_capabilities(tracking: list, config: Config) -> None:
    """Trackers learn what the task's packages are: MLflow logs a PyTorch model only of one it can load."""
    plugin = registry.for_config(config)
    for tracker in tracking:
        if isinstance(tracker, MlflowTracker):
            tracker.pytorch_model = plugin.can("mlflow_pytorch")


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
