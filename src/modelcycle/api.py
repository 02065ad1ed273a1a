"""The public Python API; every CLI verb is a thin call into one of these."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelcycle import runfiles, runs, track
from modelcycle.compress.prune import prune_model, refuse_plain_resume
from modelcycle.config import Config, load_config
from modelcycle.data.demo import write_digits
from modelcycle.data.prepare import PrepareResult
from modelcycle.data.prepare import prepare as _prepare
from modelcycle.engine import checkpoint, distributed
from modelcycle.engine.trainer import Trainer
from modelcycle.errors import UserError
from modelcycle.evaluation.crossval import crossval
from modelcycle.evaluation.evaluate import evaluate as evaluate_images
from modelcycle.evaluation.predict import predict as predict_images
from modelcycle.evaluation.text import evaluate_text, predict_text
from modelcycle.export.export import export as export_model
from modelcycle.models import transfer
from modelcycle.progress import warn
from modelcycle.runs import Run
from modelcycle.tasks import classify, text_classify
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
    distributed.init(config.train.device)  # joins torchrun's process group; nothing outside torchrun
    run_dir = runs.check_run_dir(config, resume=resume or overwrite)
    if resume:
        refuse_plain_resume(run_dir, callbacks)  # a pruned fine-tune resumes through `compress --resume`
    tracking = track.callbacks(config, resume)  # status.json, MLflow: a bad tracking set-up fails here, before work
    parts, meta, package, tuning = _task_setup(config, run_dir, resume, progress, train_items, val_items)
    trainer = Trainer(
        parts.task,
        parts.model,
        parts.train_loader,
        parts.val_loader,
        config.train,
        run_dir,
        callbacks=[*tuning.callbacks, *(callbacks or []), *tracking],
        meta=meta,
        progress=progress and distributed.is_main(),
    )
    # data, model and settings are all checked by now: only then does the run folder appear
    if resume and (changes := runs.config_changes(run_dir, config)):
        warn(
            "resuming with changed settings, so the result will differ from an uninterrupted run: " + "; ".join(changes)
        )
    # rank 0 locks the folder for the run's life (one process writes it; the other ranks write nothing)
    with runs.run_folder(run_dir, config, overwrite and not resume, resume, writer=distributed.is_main()):
        distributed.barrier()  # the folder exists (and an --overwrite'n one is gone) before any rank goes on
        tuning.report(trainer.event, show=progress and distributed.is_main())
        state = trainer.fit(resume=resume)
        run = Run(run_dir)
        if distributed.is_main():
            _write_package(run, meta, state, config, package)
            track.finish(tracking, run)
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
        "architecture": _portable(parts.model_spec),
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


def evaluate(run: str | Path | Run, split: str = "val", data: str | Path | None = None, backend: str = "auto") -> dict:
    """Metrics and a report in ``RUN/report/`` for a run's model (or a package) on a split or a
    manifest (images) / JSONL file (texts); the package says which."""
    task = _task(run)
    # the report is written last: a full disk there is an error naming the file, not a traceback
    with runfiles.disk_errors(Path(run.path if isinstance(run, Run) else run), "run evaluate again"):
        if task in ("lm", "sft", "dpo", "ppo"):  # causal LMs: perplexity, answer loss, sample answers
            from modelcycle.evaluation.lm import evaluate_lm

            return evaluate_lm(run, data=data)
        if task == "reward":  # pairwise accuracy on held-out preference pairs
            from modelcycle.evaluation.policy import evaluate_reward

            return evaluate_reward(run.path if isinstance(run, Run) else run, data=data)
        if task == "text_classify":
            return evaluate_text(run, split=split, data=data, backend=backend)
        return evaluate_images(run, split=split, data=data, backend=backend)


def compare(
    run: str | Path | Run,
    against: str | Path | Run,
    reward: str | Path | None = None,
    data: str | Path | None = None,
    samples: int = 4,
    max_new_tokens: int = 48,
) -> dict:
    """Answers to held-out prompts from the policy ``run`` and the baseline ``against``, judged by
    the reward model (the PPO run's own, or ``reward``): win rate, mean rewards, KL to the baseline;
    ``samples`` answers from each policy to each held-out prompt."""
    from modelcycle.evaluation.policy import compare_policies

    path = lambda r: r.path if isinstance(r, Run) else r  # noqa: E731
    return compare_policies(path(run), path(against), reward, data, samples=samples, max_new_tokens=max_new_tokens)


def predict(run: str | Path | Run, inputs: list[str | Path], topk: int = 5, backend: str = "auto") -> list[dict]:
    """Top-k classes per input: image files, or texts for a text classifier."""
    if _task(run) == "text_classify":
        return predict_text(run, [str(i) for i in inputs], topk=topk, backend=backend)
    return predict_images(run, inputs, topk=topk, backend=backend)


def preference_setup(config: Config):
    from modelcycle.tasks import dpo, reward

    return (reward if config.run.task == "reward" else dpo).setup(config)


def _task(run: str | Path | Run) -> str:
    path = Path(run.path if isinstance(run, Run) else run)
    ours = (path / runs.MANIFEST).is_file() or (path / "model" / runs.MANIFEST).is_file()
    if not ours and (path / "config.json").is_file():  # a plain Hugging Face folder (a downloaded Qwen, say)
        return "lm"
    return runs.read_manifest(path).get("task", "classify")


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


def _write_package(run: Run, meta: dict, state, config: Config, package=runs.write_package) -> None:
    best = run.checkpoints / "best.pt"
    source = best if best.exists() else run.checkpoints / "last.pt"
    ck = checkpoint.load(source)
    weights = ck["ema"]["model"] if ck.get("ema") else ck["model"]
    # the trainer's own record of each epoch; metrics.jsonl only for a state without one
    epochs = state.history or run.epoch_metrics()
    chosen = next((m for m in epochs if m["epoch"] == state.best_epoch), epochs[-1] if epochs else {})
    package(
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
    if meta.get("task") == "classify":  # what `modelcycle monitor` compares served traffic with
        from modelcycle.monitor.profile import profile_after_training

        profile_after_training(run.model_dir, config.monitor)
