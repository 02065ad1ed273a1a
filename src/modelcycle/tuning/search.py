"""Hyperparameter search: every trial is an ordinary run, trained by ``modelcycle.training.service.train``.

space.py says what varies, study.py keeps the record (and picks values); this module turns a
trial into a run folder, feeds each epoch's metric to the pruner, and runs workers until the
study has the asked number of finished trials. Workers are processes that know nothing of each
other: they meet only in the storage, the same way on one machine as on several.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from modelcycle.config import Config
from modelcycle.data.manifest import PreparedData
from modelcycle.engine.callbacks import Callback, epoch_line
from modelcycle.engine.trainer import Trainer, TrainingInterrupted
from modelcycle.errors import ConfigError, UserError
from modelcycle.progress import StepBar, console, info
from modelcycle.tasks import registry
from modelcycle.training.service import train
from modelcycle.tuning import report
from modelcycle.tuning.space import SearchSpace, apply, load_space
from modelcycle.tuning.study import (
    Tally,
    best_trials,
    make_pruner,
    make_sampler,
    open_storage,
    open_study,
    quiet,
    redact,
)

STOPPED = "tuning interrupted; finished trials are kept: run the same command again to continue the study"
GIVE_UP_AFTER = 3  # failed trials, with none completed yet: the recipe is broken, not the parameters


class TrialFailed(Exception):
    """A trial's own settings failed it (NaN loss, an invalid combination): record and go on."""


class TrialSurplus(TrialFailed):
    """Two workers asked for the last trial at once: the later-numbered one gives way, unrun."""


@dataclass
class TuneResult:
    study: str
    storage: str  # without its password
    folder: Path  # RUN_DIR/STUDY: the trials and the report
    direction: str  # maximize or minimize
    monitor: str
    best_value: float | None
    best_params: dict
    best_run: Path | None
    report: Path  # study.md
    finished: int
    top: list[dict] = field(default_factory=list)  # the best trials: number, value, params, epochs, run


@dataclass(frozen=True)
class Job:
    """What a worker needs; plain data, so it reaches spawned processes intact."""

    config: dict
    study: str
    storage: str
    folder: str
    budget: int


class PruningCallback(Callback):
    """Reports each epoch's monitored value to the trial. When the pruner finds the trial behind
    the others, training ends after this epoch the way early stopping ends it, so the run folder
    is whole (checkpoints, metrics, model package); the trial is marked pruned afterwards."""

    def __init__(self, trial: optuna.Trial, monitor: str):
        self.trial, self.monitor = trial, monitor
        self.epochs = 0
        self.pruned_at: int | None = None
        self.best: float | None = None

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        self.epochs = metrics["epoch"]
        value = metrics.get(self.monitor)
        if value is None:
            return
        self.trial.report(value, self.epochs)
        # after the last epoch nothing is left to save: the trial completes with its value
        if self.epochs < trainer.cfg.epochs and self.trial.should_prune():
            self.pruned_at = self.epochs
            trainer.state.stopped_early = True
            trainer.event(f"pruned by the tuner after epoch {self.epochs}: {self.monitor}={value:.4g}")

    def on_fit_end(self, trainer: Trainer) -> None:
        self.best = trainer.state.best


class EpochLines(Callback):
    """The running trial's epochs, one line each (its own bar would fight the trials' bar)."""

    def __init__(self, bar: StepBar, trial: str):
        self.bar, self.trial = bar, trial

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        self.bar.line(f"  {self.trial} {epoch_line(metrics, trainer.cfg.epochs)}")


class Objective:
    def __init__(self, base: Config, space: SearchSpace, folder: Path, worker: int, budget: int, bar: StepBar):
        self.base, self.space, self.folder, self.worker, self.budget = base, space, folder, worker, budget
        self.bar = bar
        self.tag = f" (worker {worker})" if base.tune.workers > 1 else ""

    def _surplus(self, trial: optuna.Trial) -> bool:
        """Do the trials numbered before this one already fill the budget (finished or running)?
        The storage numbers trials atomically, so of two workers that both saw room for one more
        trial, exactly the later-numbered one finds the other ahead of it. Should the earlier one
        be lost with its worker, the study loop starts another: the budget is still met."""
        earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
        tally = Tally.of(earlier)
        return tally.finished + tally.running >= self.budget

    def __call__(self, trial: optuna.Trial) -> float:
        if self._surplus(trial):
            trial.set_user_attr("surplus", True)  # FAIL without "error": it does not count toward --trials
            raise TrialSurplus(f"trial {trial.number} is over the budget of {self.budget}")
        params = self.space.suggest(trial)
        run_dir = self.folder / f"trial-{trial.number:04d}"
        trial.set_user_attr("run", str(run_dir))
        trial.set_user_attr("worker", self.worker)
        watch = PruningCallback(trial, self.base.train.monitor)
        shown = params_line(params)
        self.bar.line(f"trial #{trial.number}{self.tag} started: {shown}")
        self.bar.update(status=f"{best_so_far(trial.study)}running #{trial.number}: {shown}")
        lines = EpochLines(self.bar, f"#{trial.number}{self.tag}")
        try:
            config = apply(self.base, params, run__dir=str(self.folder), run__name=run_dir.name)
            trial.set_user_attr("epochs_planned", config.train.epochs)
            # a folder of the same name is left from a study whose database was deleted: start it afresh
            train(config, overwrite=True, progress=False, callbacks=[watch, lines])
        except TrainingInterrupted:
            trial.set_user_attr("interrupted", True)
            raise
        except UserError as exc:
            trial.set_user_attr("error", str(exc))
            raise TrialFailed(str(exc)) from None
        finally:
            trial.set_user_attr("epochs_run", watch.epochs)
        if watch.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned after epoch {watch.pruned_at}")
        if watch.best is None:
            message = f"train.monitor {self.base.train.monitor} was never measured"
            trial.set_user_attr("error", message)
            raise TrialFailed(message)
        return watch.best


def run_worker(job: Job, index: int) -> None:
    """Run trials until the study has ``job.budget`` finished ones (all workers together)."""
    with quiet():
        _work(job, index)


def _work(job: Job, index: int) -> None:
    config = Config.model_validate(job.config)
    tune = config.tune
    space = load_space(tune.space, config, tune.sampler)
    study = optuna.load_study(
        study_name=job.study, storage=open_storage(job.storage, tune), pruner=make_pruner(tune, config.train.epochs)
    )
    # worker k of the n-th session draws its own stream: a resumed study does not replay trial 0
    seed = int(np.random.SeedSequence([tune.seed, index, len(study.trials)]).generate_state(1)[0])
    study.sampler = make_sampler(tune, space, seed)
    # several workers share the terminal: each prints its lines, none draws a bar
    done = Tally.of(study.get_trials(deepcopy=False)).finished
    with StepBar("trials", job.budget, completed=done, live=tune.workers == 1) as bar:
        _trials(study, Objective(config, space, Path(job.folder), index, job.budget, bar), job)


def _trials(study: optuna.Study, objective: Objective, job: Job) -> None:
    monitor = objective.base.train.monitor
    while True:
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        tally = Tally.of(trials)
        if tally.finished >= job.budget:
            return
        if tally.succeeded == 0 and tally.finished >= GIVE_UP_AFTER:
            last = max((t for t in trials if "error" in t.user_attrs), key=lambda t: t.number)
            raise UserError(
                f"the first {tally.finished} trials of study {job.study} all failed, the last with: "
                f"{last.user_attrs['error']}. Fix the recipe or the space, then run the command again"
            )
        if not tally.waiting and tally.finished + tally.running >= job.budget:
            time.sleep(2)  # the last trials run elsewhere: wait until they finish or go stale
            continue
        try:
            study.optimize(
                objective,
                n_trials=1,
                catch=(TrialFailed,),
                callbacks=[lambda s, t: _progress_line(s, t, job.budget, monitor, objective)],
            )
        except TrainingInterrupted:  # its own message says `train --resume`, which is not how a study goes on
            raise TrainingInterrupted(STOPPED) from None


def params_line(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def best_so_far(study: optuna.Study) -> str:
    best = best_trials(study.get_trials(deepcopy=False), study.direction, 1)
    return f"best {best[0].value:.4f} (#{best[0].number})  " if best else ""


def _progress_line(study: optuna.Study, trial: FrozenTrial, budget: int, monitor: str, objective: Objective) -> None:
    if trial.user_attrs.get("surplus"):
        return
    trials = study.get_trials(deepcopy=False)
    if trial.state == TrialState.COMPLETE:
        outcome = f"{monitor}={trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        last = trial.intermediate_values.get(trial.user_attrs.get("epochs_run"))
        outcome = f"pruned after epoch {trial.user_attrs.get('epochs_run')}" + (
            f" ({monitor}={last:.4f})" if last is not None else ""
        )
    else:
        outcome = f"failed: {trial.user_attrs.get('error', 'see the run folder')}"
    best = best_so_far(study)
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else 0.0
    finished = Tally.of(trials).finished
    objective.bar.line(f"trial {finished}/{budget}  #{trial.number}{objective.tag}  {outcome}  {best}{seconds:.1f}s")
    objective.bar.update(completed=finished, status=best)


def _worker_main(job: Job, index: int, threads: int) -> None:
    """Entry of a spawned worker: the parent prints nothing for it, so errors are told here."""
    import torch

    torch.set_num_threads(threads)  # n workers share the cores instead of each taking them all
    try:
        run_worker(job, index)
    except (TrainingInterrupted, KeyboardInterrupt):
        sys.exit(130)  # the parent says it once for all workers
    except UserError as exc:
        console.print(f"[bold red]error:[/bold red] worker {index}: {exc}", highlight=False)
        sys.exit(getattr(exc, "exit_code", 2))


def _run_processes(job: Job, workers: int) -> None:
    context = multiprocessing.get_context("spawn")  # no fork: torch's threads and the DB pool do not survive it
    threads = max(1, (os.cpu_count() or 1) // workers)
    processes = [
        context.Process(target=_worker_main, args=(job, i, threads), name=f"tune-worker-{i}") for i in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:  # they had the same Ctrl-C: each saves its run and stops
            process.join()
        raise TrainingInterrupted(STOPPED) from None
    if failed := [f"{i} (exit code {p.exitcode})" for i, p in enumerate(processes) if p.exitcode]:
        if all(p.exitcode == 130 for p in processes if p.exitcode):
            raise TrainingInterrupted(STOPPED)
        raise UserError(
            f"tuning worker {', '.join(failed)} stopped early (its message is above); the study keeps every "
            "finished trial: fix the cause and run the same command again to continue"
        )


def tune(config: Config) -> TuneResult:
    """Run (or continue) the study ``config.tune`` describes over the recipe ``config``."""
    with quiet():
        return _tune(config)


def _tune(config: Config) -> TuneResult:
    settings = config.tune
    if settings.space is None:
        raise ConfigError("no search space: pass --space FILE (see docs/tune.md and configs/space.yaml)")
    if settings.grace_s <= settings.heartbeat_s:
        raise ConfigError(
            f"tune.grace_s ({settings.grace_s}) must be longer than tune.heartbeat_s ({settings.heartbeat_s}): "
            "a trial is declared dead after grace_s without a heartbeat"
        )
    space = load_space(settings.space, config, settings.sampler)
    # the task's defaults filled once: each trial's config is this one dumped whole, where a field
    # left unset (model.name) would be an explicit null; and a key the task ignores fails here once
    config = registry.apply_defaults(config)
    registry.check_reads(config)
    if config.data.root is not None and "data.root" not in space.keys:
        PreparedData.open(config.data.root)  # a missing data folder would fail every trial the same way
    name = settings.study or f"{config.run.name}-tune"
    folder = Path(config.run.dir) / name
    if settings.storage is None:
        folder.mkdir(parents=True, exist_ok=True)
    url = settings.storage or f"sqlite:///{folder / 'study.db'}"
    study = open_study(open_storage(url, settings), name, config.train, space)
    budget = settings.trials
    if settings.sampler == "grid" and space.grid_size() < budget:
        budget = space.grid_size()
        info(f"the grid has {budget} combinations: the study stops after {budget} trials")
    job = Job(config.model_dump(mode="json"), name, url, str(folder), budget)
    done = Tally.of(study.trials).finished
    info(
        f"study {name}: {done}/{budget} trials finished; sampler {settings.sampler}, pruner {settings.pruner}, "
        f"{settings.workers} worker{'s' * (settings.workers > 1)}; storage {redact(url)}; trials in {folder}/"
    )
    try:
        if settings.workers == 1:
            run_worker(job, 0)
        else:
            _run_processes(job, settings.workers)
    finally:  # also after an error or Ctrl-C: the report shows what the study has so far
        trials = optuna.load_study(study_name=name, storage=open_storage(url, settings)).trials
        trials = [t for t in trials if not t.user_attrs.get("surplus")]  # given way unrun: nothing to report
        written = report.write(trials, study.direction, folder, config, space, redact(url), budget)
    return _result(trials, study.direction, name, url, folder, config, written)


def _result(
    trials: list[FrozenTrial],
    direction: optuna.study.StudyDirection,
    name: str,
    url: str,
    folder: Path,
    config: Config,
    written: Path,
) -> TuneResult:
    top = best_trials(trials, direction, 5)
    rows = [
        {
            "number": t.number,
            "value": t.value,
            "params": t.params,
            "epochs": t.user_attrs.get("epochs_run"),
            "run": t.user_attrs.get("run"),
        }
        for t in top
    ]
    best = top[0] if top else None
    return TuneResult(
        study=name,
        storage=redact(url),
        folder=folder,
        direction=direction.name.lower(),
        monitor=config.train.monitor,
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
        best_run=Path(best.user_attrs["run"]) if best and "run" in best.user_attrs else None,
        report=written,
        finished=Tally.of(trials).finished,
        top=rows,
    )
