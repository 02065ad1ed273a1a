"""Image training: `modelcycle train` against PyTorch Lightning's Trainer.

Both sides train the same model on the same loaders (modelcycle's data pipeline and model
builders, set up by ``tasks.images.setup`` from the same recipe and seed), with the same loss
(label smoothing included), learning rate, weight decay, warm-up + cosine schedule and epochs.
The Lightning side is what a Lightning user writes around them: a LightningModule, torch's
AdamW on ``self.parameters()``, the Trainer's defaults (a checkpoint per epoch, its logger),
the progress bar off as on the modelcycle side. Quality: the last epoch's validation accuracy.

Cases: ``digits`` (configs/digits.yaml, simple_cnn at 16 px on the 1,437 + 360 bundled digits)
and ``resnet18`` (configs/flowers.yaml at 64 px on generated JPEGs, 4 classes).
"""

from __future__ import annotations

import time
from pathlib import Path

import harness

PEER = "PyTorch Lightning"
QUALITY = "val accuracy"
CASES = {"digits": "image training, digits", "resnet18": "image training, resnet18 64 px"}
RECIPES = {"digits": "digits.yaml", "resnet18": "flowers.yaml"}


def prepare(case: str, root: Path, quick: bool) -> dict:
    import common

    if case == "digits":
        data, epochs, extra = common.digits_data(root), 2 if quick else 6, []
        sizes = "simple_cnn, 1,437 train / 360 val images"
    else:
        from modelcycle import prepare as prepare_folder

        count = 120 if quick else 400
        common.write_image_folder(root / "raw", count, 96, 4)
        prepare_folder(root / "raw", root / "data", val=0.2, seed=0)
        data = root / "data"
        epochs, extra = 1 if quick else 2, ["data.image_size=64"]
        sizes = f"{count} JPEGs 96 px -> 64 px, 4 classes"
    train_count = len((data / "train.txt").read_text().splitlines())
    recipe = str(common.REPO / "configs" / RECIPES[case])
    args = [recipe, f"data.root={data}", f"train.epochs={epochs}", *extra]
    return {"cli_args": args, "samples": train_count * epochs, "what": f"{sizes}, {epochs} epochs"}


modelcycle = harness.modelcycle_training("val_accuracy")


def peer(case: str, root: Path) -> dict:
    import pytorch_lightning as pl
    import torch

    from modelcycle.config import load_config
    from modelcycle.engine.optim import lr_factor
    from modelcycle.tasks import images

    s = harness.settings(root)
    config = load_config(s["cli_args"][0], s["cli_args"][1:])
    t = config.train
    pl.seed_everything(t.seed, verbose=False)
    parts = images.setup(config)

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = parts.model
            self.correct = self.count = 0

        def training_step(self, batch, index):
            loss, _ = parts.task.training_step(self.model, batch)
            return loss

        def on_validation_epoch_start(self) -> None:
            self.correct = self.count = 0

        def validation_step(self, batch, index):
            sums = parts.task.validation_step(self.model, batch)
            self.correct += int(sums["correct"])
            self.count += int(sums["count"])

        def on_validation_epoch_end(self) -> None:
            self.log("val_accuracy", self.correct / max(self.count, 1))

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=t.lr, weight_decay=t.weight_decay)
            steps = len(parts.train_loader)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(t, steps, steps * t.epochs))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    class Clock(pl.Callback):
        """The training loop's seconds: each epoch's start to its last batch's end (validation,
        which Lightning runs inside the epoch, left out as on the modelcycle side)."""

        seconds = 0.0

        def on_train_epoch_start(self, trainer, module) -> None:
            self.start = self.last = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            self.last = time.perf_counter()

        def on_train_epoch_end(self, trainer, module) -> None:
            self.seconds += self.last - self.start

    clock = Clock()
    module = Classifier()
    trainer = pl.Trainer(
        max_epochs=t.epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(root / "lightning"),
        enable_progress_bar=False,
        callbacks=[clock],
    )
    trainer.fit(module, parts.train_loader, parts.val_loader)
    return {"samples": s["samples"], "seconds": clock.seconds, "quality": module.correct / max(module.count, 1)}


if __name__ == "__main__":
    harness.child_main({"modelcycle": modelcycle, "peer": peer})
