"""Fine-tuning: a run starts from another run's weights (``model.init_from``) or from a checkpoint
file such as torchvision's (``model.weights``, models/pretrained.py), trains only part of
the model (``model.freeze``) until ``train.unfreeze_at_epoch``, and may give the head a larger
learning rate (``train.head_lr_mult``, see engine/optim.py).

The new run's model is built from its *own* config (its data's classes, channels and image size)
and the source's weights are copied into it, never the other way round: the result is an ordinary
run that evaluate, export and serve take as they are, and its package records where it started.
When the classes differ the head is rebuilt for the new ones, and the rows of classes the source
knew by the same name are copied over, so what was already learnt about them is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from modelcycle.config import Config
from modelcycle.engine import checkpoint
from modelcycle.engine.callbacks import Callback
from modelcycle.errors import ConfigError, UserError
from modelcycle.models import pretrained
from modelcycle.models.freeze import apply_freeze, unfreeze
from modelcycle.models.state_copy import WeightsMismatch, listing, transfer_weights
from modelcycle.packages import load_model, pytorch_classifier
from modelcycle.progress import info, warn
from modelcycle.runs import refuse_own_run


@dataclass
class FineTuning:
    record: dict | None  # the package's "init_from" entry; None without model.init_from
    lines: list[str]  # what was done, for events.log and the terminal
    callbacks: list[Callback]
    weights: dict | None = None  # the package's "pretrained" entry; None without model.weights

    def report(self, event: Callable[[str], None], show: bool) -> None:
        for line in self.lines:
            event(line)
            if show:
                info(line)


def prepare(
    config: Config,
    model: nn.Module,
    classes: list[str],
    preprocessing: dict,
    run_dir: Path,
    resume: bool,
    show: bool = True,
) -> FineTuning:
    """Load ``model.init_from`` or ``model.weights`` into ``model`` (not when resuming from a
    checkpoint, which holds newer weights), then apply ``model.freeze``; errors come before the run
    folder exists."""
    lines: list[str] = []
    record = weights = None
    source, file = config.model.init_from, config.model.weights
    if source and file:
        raise ConfigError(
            f"model.init_from={source} and model.weights={file} both say where the weights start; keep one"
        )
    last = run_dir / "checkpoints" / "last.pt"
    if (source or file) and resume and last.is_file():
        meta = checkpoint.load(last).get("meta", {})  # what the run started from
        record, weights = meta.get("init_from"), meta.get("pretrained")
        key = "model.init_from" if source else "model.weights"
        lines.append(f"{key}: not loaded again, the weights come from {last} (--resume)")
    elif source:
        record = load_init_from(config, model, classes, preprocessing, run_dir)
        lines += describe(record)
    elif file:
        weights = pretrained.load_weights(config, model, classes, preprocessing)
        lines += pretrained.describe(weights)
    mode = config.model.freeze
    if mode != "none":
        lines.append(apply_freeze(model, mode).line())
        if not (source or file):
            warn(
                f"model.freeze={mode} without model.init_from or model.weights: "
                "the frozen layers keep their random initial weights"
            )
    at = config.train.unfreeze_at_epoch
    if at and mode == "none":
        lines.append(f"train.unfreeze_at_epoch={at}: nothing to do, model.freeze=none trains everything already")
    elif at > config.train.epochs:
        lines.append(f"train.unfreeze_at_epoch={at} is after the last epoch ({config.train.epochs}): never")
    callbacks = unfreeze_callbacks(config, show)
    if config.train.head_lr_mult != 1.0:
        mult = config.train.head_lr_mult
        lines.append(f"train.head_lr_mult={mult:g}: the head trains at lr x {mult:g}; the logged lr is the body's")
    return FineTuning(record, lines, callbacks, weights)


def load_init_from(config: Config, model: nn.Module, classes: list[str], preprocessing: dict, run_dir: Path) -> dict:
    """Copy a run's or package's checked weights into ``model``; returns the ``init_from`` record."""
    source = config.model.init_from
    if not Path(source).exists():
        raise ConfigError(
            f"model.init_from: {source} does not exist; give a run folder (runs/NAME) or a model package "
            "(runs/NAME/model) made by `modelcycle train`, or drop model.init_from to train from scratch"
        )
    try:
        manifest = pytorch_classifier(source, "model.init_from", "fine-tune")
    except UserError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith("model.init_from") else f"model.init_from: {text}") from None
    folder = Path(manifest["_dir"]).resolve()
    refuse_own_run(
        run_dir, manifest, f"model.init_from {source} is this run's own folder {run_dir}; choose another run.name"
    )
    source_model, _ = load_model(folder)  # the package's sha256 is checked here
    arch, theirs = manifest["architecture"], manifest["preprocessing"]
    try:
        done = transfer_weights(
            model,
            source_model,
            manifest["classes"],
            classes,
            arch["in_channels"],
            preprocessing["channels"],
        )
    except WeightsMismatch as exc:
        theirs_text = f"{arch['name']} {arch.get('args') or {}}, in_channels={arch['in_channels']}"
        ours = f"{config.model.name} {config.model.args}, in_channels={preprocessing['channels']}"
        raise ConfigError(
            f"model.init_from: {source} ({theirs_text}) does not fit this run's model ({ours}): {exc.summary}\n  "
            f"{exc.text()}\n"
            f"Use the source's architecture (model.name={arch['name']} model.args={arch.get('args') or {}}), "
            "or drop model.init_from to train from scratch"
        ) from None
    notes = []
    if theirs.get("image_size") != preprocessing["image_size"]:
        notes.append(
            f"image_size {theirs.get('image_size')} -> {preprocessing['image_size']}: the source saw other sizes; "
            "convolutional features carry over, but expect them to need some adapting"
        )
    if theirs.get("channels") == preprocessing["channels"] and not all(
        torch.allclose(torch.tensor(theirs[k]), torch.tensor(preprocessing[k])) for k in ("mean", "std")
    ):
        notes.append(
            f"normalisation differs from the source's (mean {theirs.get('mean')} std {theirs.get('std')}); "
            "the pretrained features see shifted inputs"
        )
    return {
        "source": str(folder),
        "source_run": manifest.get("source_run"),
        "sha256": manifest["weights"]["sha256"],
        "architecture": arch,
        "tensors": len(model.state_dict()),
        "loaded": len(done.loaded),
        "replaced": done.replaced,
        "class_mapping": {"copied": done.copied, "new": done.new, "dropped": done.dropped},
        "adapted": done.adapted,
        "notes": notes,
    }


def describe(record: dict) -> list[str]:
    """The ``init_from`` record in words, one line per fact (the class mapping report)."""
    lines = [
        f"model.init_from: {record['loaded']} of {record['tensors']} tensors loaded from {record['source']} "
        f"(sha256 {record['sha256'][:12]})"
    ]
    mapping = record["class_mapping"]
    if record["replaced"]:
        copied = listing(mapping["copied"]) if mapping["copied"] else "none"
        new = listing(mapping["new"]) if mapping["new"] else "none"
        line = (
            f"model.init_from: head replaced ({', '.join(record['replaced'])}) for this run's "
            f"{len(mapping['copied']) + len(mapping['new'])} classes: rows copied from the source for {copied}; "
            f"new (fresh rows): {new}"
        )
        if mapping["dropped"]:
            line += f"; source classes not in this run: {listing(mapping['dropped'])}"
        lines.append(line)
    else:
        lines.append(f"model.init_from: same {len(mapping['copied'])} classes as the source, head loaded as it was")
    lines += [f"model.init_from: adapted {a}" for a in record["adapted"]]
    lines += [f"model.init_from: note: {n}" for n in record["notes"]]
    return lines


def unfreeze_callbacks(config: Config, show: bool = True) -> list[Callback]:
    """``train.unfreeze_at_epoch`` as a callback, for every task that freezes with ``model.freeze``."""
    at = config.train.unfreeze_at_epoch
    return [UnfreezeAt(at, show)] if at and config.model.freeze != "none" else []


class UnfreezeAt(Callback):
    """Everything trains from epoch ``epoch`` (1-based) on. Derived from the trainer's epoch
    counter rather than remembered, so a run resumed after that epoch is unfrozen and one resumed
    before it is still frozen, as in an uninterrupted run. The optimizer already holds every
    parameter (engine/optim.py), so the unfrozen ones simply start receiving updates."""

    def __init__(self, epoch: int, show: bool = True):
        self.epoch, self.show = epoch, show
        self.done = False

    def on_epoch_start(self, trainer) -> None:
        if self.done or trainer.state.epoch + 1 < self.epoch:
            return
        self.done = True
        report = unfreeze(trainer.model)
        message = f"epoch {trainer.state.epoch + 1}: train.unfreeze_at_epoch={self.epoch}, {report.line()}"
        trainer.event(message)
        if self.show:
            info(message)
