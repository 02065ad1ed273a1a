"""TensorBoard event files in ``RUN/tensorboard/`` (``pip install 'modelcycle[tensorboard]'``), so
``tensorboard --logdir runs`` shows every run, each under its own folder name.

What goes in, all by optimizer step so train and validation curves share an axis: the logged
windows (``train/loss``, ``train/lr``, ``train/samples_per_s``...), each epoch's figures (``val/*``,
``epoch/*``), whatever the task publishes (a training batch's images, the confusion matrix,
language-model samples as text; ``engine/callbacks.publish``) and at the end the config as
hyperparameters beside the final metrics. A resumed run writes a new event file that starts at
the checkpoint's step, and tells TensorBoard to drop what the earlier file holds from there on
(``purge_step``), so no step shows twice. Only rank 0 of a distributed run writes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from modelcycle.config import flatten
from modelcycle.engine.callbacks import Callback
from modelcycle.errors import UserError
from modelcycle.progress import warn
from modelcycle.track.status import outcome

if TYPE_CHECKING:
    from modelcycle.config import Config
    from modelcycle.engine.callbacks import Loop

FOLDER = "tensorboard"  # in the run folder
EXTRA = "pip install 'modelcycle[tensorboard]'"
NOT_RESULTS = ("step", "epoch", "lr", "epoch_time_s")  # end-of-epoch figures that are not the run's results


def available() -> bool:
    from importlib.util import find_spec

    return find_spec("tensorboard") is not None


def wanted(config: Config) -> bool:
    """track.tensorboard: true needs the package (an error naming the extra), None uses it if
    it is there, false never."""
    setting = config.track.tensorboard
    if setting and not available():
        raise UserError(f"track.tensorboard=true but the tensorboard package is not installed; {EXTRA}")
    return setting is not False and available()


class TensorBoardTracker(Callback):
    takes_media = True

    def __init__(self, config: Config):
        self.config = config
        self.writer: Any = None
        self.final: dict = {}  # the last epoch's metrics, beside the hyperparameters at the end

    def on_fit_start(self, trainer: Loop) -> None:
        if trainer.run_dir is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        step = trainer.state.step
        history = getattr(trainer.state, "history", None) or []
        self.final = dict(history[-1]) if history else {}
        try:  # from a checkpoint: what an earlier attempt logged after it is hidden, so steps never repeat
            self.writer = SummaryWriter(trainer.run_dir / FOLDER, purge_step=step + 1)
        except OSError as exc:
            warn(f"no TensorBoard logging: {exc}")

    def on_log(self, trainer: Loop, metrics: dict) -> None:
        self._scalars(metrics, trainer.state.step, "train", skip=("step", "epoch"))

    def on_epoch_end(self, trainer: Loop, metrics: dict) -> None:
        self.final = dict(metrics)
        self._scalars(metrics, trainer.state.step, "epoch", skip=("step", "lr"))  # lr: the windows have it

    def on_media(self, trainer: Loop, tag: str, value: Any) -> None:
        step = trainer.state.step
        if isinstance(value, str):
            self._write(lambda: self.writer.add_text(tag, value, step))
        elif hasattr(value, "savefig"):  # a matplotlib figure
            self._write(lambda: self.writer.add_figure(tag, value, step))
        elif getattr(value, "ndim", 0) == 4:
            self._write(lambda: self.writer.add_images(tag, value, step, dataformats="NCHW"))
        else:
            self._write(lambda: self.writer.add_image(tag, value, step, dataformats="CHW"))

    def on_fit_end(self, trainer: Loop) -> None:
        if self.writer is None:
            return
        if outcome()[0] == "finished":
            self._write(lambda: self._hparams(trainer.state.step))
        self._write(self.writer.close)
        self.writer = None

    def _hparams(self, step: int) -> None:
        """The config beside the final metrics in TensorBoard's HPARAMS tab, in this run's own
        folder (``SummaryWriter.add_hparams`` would make a folder of its own for them)."""
        from torch.utils.tensorboard.summary import hparams

        tree = flatten(self.config.model_dump(mode="json"), whole=())
        values = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in tree.items()}
        final = {f"hparams/{k}": v for k, v in self.final.items() if _number(v) and k not in NOT_RESULTS}
        for summary in hparams(values, final):
            self.writer.file_writer.add_summary(summary)
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, step)

    def _scalars(self, metrics: dict, step: int, other: str, skip: tuple[str, ...]) -> None:
        def write() -> None:
            for key, value in metrics.items():
                if key not in skip and _number(value):
                    self.writer.add_scalar(_tag(key, other), value, step)

        self._write(write)

    def _write(self, action) -> None:
        """TensorBoard is a view: a write it cannot make (a full disk) costs it, not the run,
        whose own files report the problem."""
        if self.writer is None:
            return
        try:
            action()
        except (OSError, RuntimeError) as exc:
            warn(f"TensorBoard logging stopped: {exc}")
            self.writer = None


def _tag(key: str, other: str) -> str:
    """``train_loss`` -> ``train/loss``, ``val_top5`` -> ``val/top5``; the rest (lr,
    samples_per_s, epoch_time_s) under ``other``. An epoch's train_* are its averages, not a
    window's, so they go under ``epoch/`` rather than beside the windows at the same step."""
    split, _, name = key.partition("_")
    if split == "val" or (split == "train" and other == "train"):
        return f"{split}/{name}"
    return f"{other}/{key}"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
