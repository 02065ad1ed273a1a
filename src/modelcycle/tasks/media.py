"""What the classification tasks show where a run's pictures are taken (TensorBoard, through
``engine/callbacks.publish``): the images of a training batch as the model gets them, once, and
the confusion matrix of each validation pass. Nothing is drawn when no callback takes media."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from modelcycle.engine.callbacks import Callback, publish

CONFUSION_CLASSES = 100  # more classes make a picture nobody reads, and K*K counts per validation batch
PICTURES = 16  # images of the training batch shown


class BatchPictures(Callback):
    """The first training batch this process trains on, its normalisation undone: what the
    augmentation and resizing make of the images is what the model learns from."""

    def __init__(self, mean: list[float], std: list[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.shown = False

    def on_train_batch(self, trainer: Any, batch: Any) -> None:
        if self.shown:
            return
        self.shown = True
        images = batch[0][:PICTURES]
        publish(trainer, "train/batch", lambda: (images.float() * self.std + self.mean).clamp(0, 1).numpy())


class ConfusionPicture(Callback):
    """The validation pass's confusion matrix (rows true, columns predicted), which the task's
    sums carry (``ClassifyTask.confusion``: all ranks' counts), each epoch."""

    def __init__(self, task: Any, classes: list[str]):
        self.task, self.classes = task, classes

    def on_epoch_end(self, trainer: Any, metrics: dict) -> None:
        matrix = self.task.confusion
        if matrix is not None:
            publish(trainer, "val/confusion_matrix", lambda: confusion_figure(np.asarray(matrix), self.classes))


def confusion_figure(matrix: np.ndarray, classes: list[str]):
    from matplotlib.figure import Figure  # only when something shows it

    size = min(12.0, max(4.0, 0.4 * len(classes) + 2))
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 20:  # counts in the cells while they have room
        for (i, j), value in np.ndenumerate(matrix.astype(int)):
            light = value > matrix.max() / 2
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color="white" if light else "black")
    return fig
