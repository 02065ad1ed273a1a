"""What the classification tasks show where a run's pictures are taken (TensorBoard, through
``engine/callbacks.publish``): the images of a training batch as the model gets them, once, and
the confusion matrix of each validation pass. Nothing is drawn when no callback takes media."""

from __future__ import annotations

from typing import Any

import torch

from modelcycle.engine.callbacks import Callback, publish
from modelcycle.track.figures import confusion_figure  # imports matplotlib only when it draws

CONFUSION_CLASSES = 100  # more classes make a picture nobody reads, and K*K counts per validation batch
CONFUSION_INCHES = 12.0  # drawn every epoch: a side of at most 1200 pixels, however many classes
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
            publish(trainer, "val/confusion_matrix", lambda: confusion_figure(matrix, self.classes, CONFUSION_INCHES))
