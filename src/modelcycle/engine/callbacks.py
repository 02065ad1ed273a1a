"""Hooks into the training loop. The progress display is one; users may add their own."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from rich.progress import TextColumn

from modelcycle.progress import console, make_progress

if TYPE_CHECKING:
    from pathlib import Path

    from modelcycle.runs import Run


class Loop(Protocol):
    """What a callback sees of any loop on a run context: the epoch loop (engine/trainer.py) or
    PPO's iterations (tasks/ppo.py). ``state.step`` counts the loop's units of work."""

    run_dir: Path | None
    meta: dict
    state: Any
    cfg: Any
    callbacks: list

    def event(self, message: str) -> None: ...


Trainer = Loop  # the name the hooks' annotations used before there were other loops


class Callback:
    takes_media = False  # True: on_media gets the pictures and texts tasks publish (TensorBoard)

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer) -> None: ...

    def on_train_batch(self, trainer: Trainer, batch: Any) -> None:
        """Each training batch as the loader gave it (on the CPU), before the step computes."""

    def on_media(self, trainer: Trainer, tag: str, value: Any) -> None:
        """A picture (a matplotlib figure, or an (N,) C, H, W float array in 0..1) or a text (str)
        a task published with :func:`publish`, at ``trainer.state.step``."""

    def on_step_end(self, trainer: Trainer) -> None: ...

    def on_log(self, trainer: Trainer, metrics: dict) -> None: ...

    def on_validation_start(self, trainer: Trainer, model: Any) -> None:
        """Before a validation pass of ``model`` (the EMA model with ``train.ema``), e.g. to hook it."""

    def on_validation_end(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...


def publish(loop: Loop, tag: str, make: Callable[[], Any]) -> None:
    """Hand what a task can show (a confusion matrix, sample generations) to the callbacks that
    take media; ``make`` builds it only if one does, so a run without them pays nothing."""
    takers = [cb for cb in loop.callbacks if cb.takes_media]
    if takers:
        value = make()
        for cb in takers:
            cb.on_media(loop, tag, value)


class Tracker(Callback):
    """A callback that also sees the finished run, after ``api.train`` wrote the model package
    (the trainer's ``on_fit_end`` comes before it)."""

    def finish(self, run: Run) -> None: ...


class ProgressDisplay(Callback):
    """A live bar on a terminal (loss, accuracy, throughput, ETA); one line per epoch always."""

    def __init__(self):
        self.progress = make_progress(TextColumn("{task.fields[stats]}"))
        self.task = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.progress.start()

    def on_epoch_start(self, trainer: Trainer) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        total = trainer.batches_per_epoch
        self.task = self.progress.add_task(
            f"epoch {trainer.state.epoch + 1}/{trainer.cfg.epochs}",
            total=total,
            completed=trainer.state.batch_in_epoch,
            stats="",
        )

    def on_step_end(self, trainer: Trainer) -> None:
        self.progress.advance(self.task, trainer.cfg.accumulate)

    def on_log(self, trainer: Trainer, metrics: dict) -> None:
        stats = "  ".join(_fmt(k, v) for k, v in metrics.items() if k.startswith("train_") or k == "samples_per_s")
        self.progress.update(self.task, stats=stats)

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        console.print(epoch_line(metrics, trainer.cfg.epochs), highlight=False)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.progress.stop()


def epoch_line(metrics: dict, epochs: int) -> str:
    """``epoch 2/5  train_loss=0.41  val_accuracy=0.87 ...``: an epoch's end-of-epoch metrics."""
    shown = {k: v for k, v in metrics.items() if k not in ("step", "epoch", "lr")}
    return f"epoch {metrics['epoch']}/{epochs}  " + "  ".join(_fmt(k, v) for k, v in shown.items())


def _fmt(key: str, value) -> str:
    if isinstance(value, float):
        return f"{key}={value:.4g}" if abs(value) < 1000 else f"{key}={value:,.0f}"
    return f"{key}={value}"
