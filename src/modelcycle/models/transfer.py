"""Fine-tuning: a run starts from another run's weights (``model.init_from``), trains only part of
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
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from modelcycle.config import Config
from modelcycle.engine import checkpoint
from modelcycle.engine.callbacks import Callback
from modelcycle.errors import ConfigError, UserError
from modelcycle.models.freeze import HEAD_NAMES, apply_freeze, head_name, unfreeze, within
from modelcycle.packages import load_model, pytorch_classifier
from modelcycle.progress import info, warn
from modelcycle.runs import refuse_own_run

SHOWN = 10  # mismatched layers / class names listed before "and N more"


class WeightsMismatch(ConfigError):
    """The source's tensors do not fit the model; ``problems`` names each tensor, ``summary`` counts them."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = [text for _, text in problems]
        counts = {kind: sum(k == kind for k, _ in problems) for kind in ("shape", "missing", "unexpected")}
        words = ("differ in shape", "missing in the source", "in the source but not in this run's model")
        self.summary = ", ".join(f"{n} {w}" for n, w in zip(counts.values(), words, strict=True) if n)
        super().__init__(f"the source's weights do not fit the model ({self.summary}):\n  " + self.text())

    def text(self) -> str:
        return _listing(self.problems, "\n  ")


@dataclass
class Transfer:
    """What copying a source's weights into a model did."""

    loaded: list[str] = field(default_factory=list)  # tensors copied whole (or channel-adapted)
    replaced: list[str] = field(default_factory=list)  # class-indexed head tensors rebuilt for the new classes
    copied: list[str] = field(default_factory=list)  # the run's classes whose head rows came from the source
    new: list[str] = field(default_factory=list)  # the run's classes the source did not know: fresh rows
    dropped: list[str] = field(default_factory=list)  # the source's classes this run does not have
    adapted: list[str] = field(default_factory=list)  # input-channel adaptations, in words


def transfer_weights(
    model: nn.Module,
    source_model: nn.Module,
    source_classes: list[str],
    classes: list[str],
    source_channels: int,
    channels: int,
) -> Transfer:
    """Copy ``source`` into ``model`` (in place) or change nothing and raise WeightsMismatch.

    With other classes, the head's class-indexed tensors keep the model's fresh initialisation
    except for rows of classes with the same name in the source. A first convolution that differs
    only in its input channels (grey <-> RGB) is adapted so a grey picture gets the source's response.
    Mismatches are named by parameter; buffers (BatchNorm statistics) only when no parameter differs,
    since they follow their layer's parameters and would bury them.
    """
    target, source = model.state_dict(), source_model.state_dict()
    parameters = {n for n, _ in model.named_parameters()} | {n for n, _ in source_model.named_parameters()}
    out = Transfer()
    head = "" if list(source_classes) == list(classes) else _head(model)
    index = {name: i for i, name in enumerate(source_classes)}
    problems, state = [], {}
    for key, want in target.items():
        have = source.get(key)
        if have is None:
            continue
        if head and within(key, head) and _class_rows(have, want, len(source_classes), len(classes)):
            rows = want.detach().clone()
            for i, name in enumerate(classes):
                if name in index:
                    rows[i] = have[index[name]]
            state[key] = rows
            out.replaced.append(key)
        elif have.shape == want.shape:
            state[key] = have
            out.loaded.append(key)
        elif not out.adapted and (adapted := _adapt_input(have, want, source_channels, channels)) is not None:
            state[key], how = adapted
            out.loaded.append(key)
            out.adapted.append(f"{key}: {source_channels} -> {channels} input channels ({how})")
        else:
            problems.append((key, "shape", f"{key}: source {list(have.shape)}, this run {list(want.shape)}"))
    problems += [
        (k, "missing", f"{k}: missing in the source (this run {list(v.shape)})")
        for k, v in target.items()
        if k not in source
    ]
    problems += [
        (k, "unexpected", f"{k}: in the source {list(v.shape)}, not in this run's model")
        for k, v in source.items()
        if k not in target
    ]
    if problems:
        named = [(kind, text) for key, kind, text in problems if key in parameters]
        raise WeightsMismatch(named or [(kind, text) for _, kind, text in problems])
    model.load_state_dict({**target, **state})
    if head:
        out.copied = [c for c in classes if c in index]
        out.new = [c for c in classes if c not in index]
        out.dropped = [c for c in source_classes if c not in set(classes)]
    else:
        out.copied = list(classes)
    return out


def _class_rows(have: torch.Tensor, want: torch.Tensor, source_count: int, count: int) -> bool:
    """A head tensor with one row per class (a final Linear's weight and bias)."""
    return (
        have.dim() > 0 and have.shape[0] == source_count and want.shape[0] == count and have.shape[1:] == want.shape[1:]
    )


def _head(model: nn.Module) -> str:
    try:
        return head_name(model)
    except ConfigError:
        raise ConfigError(
            "model.init_from: this run's classes differ from the source's, so the head must be replaced, but the "
            f"model has no module named {' / '.join(HEAD_NAMES)}; name your final layer `head`"
        ) from None


def _adapt_input(have: torch.Tensor, want: torch.Tensor, source_channels: int, channels: int):
    """The stem's weights for grey -> RGB (repeated, divided by 3) or RGB -> grey (summed), or None."""
    if have.dim() < 3 or have.shape[0] != want.shape[0] or have.shape[2:] != want.shape[2:]:
        return None
    if (have.shape[1], want.shape[1]) != (source_channels, channels):
        return None
    if source_channels == 1:
        return have.repeat(1, channels, *[1] * (have.dim() - 2)) / channels, f"repeated and divided by {channels}"
    if channels == 1:
        return have.sum(1, keepdim=True), "summed over the colour channels"
    return None


def _listing(items: list[str], sep: str = ", ") -> str:
    more = len(items) - SHOWN
    return sep.join(items[:SHOWN]) + (f"{sep}and {more} more" if more > 0 else "")


# ---------------------------------------------------------------- from the config to a ready model


@dataclass
class FineTuning:
    record: dict | None  # the package's "init_from" entry; None without model.init_from
    lines: list[str]  # what was done, for events.log and the terminal
    callbacks: list[Callback]

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
    """Load ``model.init_from`` into ``model`` (not when resuming from a checkpoint, which holds
    newer weights), then apply ``model.freeze``; errors come before the run folder exists."""
    lines: list[str] = []
    record = None
    source = config.model.init_from
    last = run_dir / "checkpoints" / "last.pt"
    if source and resume and last.is_file():
        record = checkpoint.load(last).get("meta", {}).get("init_from")  # what the run started from
        lines.append(f"model.init_from: not loaded again, the weights come from {last} (--resume)")
    elif source:
        record = load_init_from(config, model, classes, preprocessing, run_dir)
        lines += describe(record)
    mode = config.model.freeze
    if mode != "none":
        lines.append(apply_freeze(model, mode).line())
        if not source:
            warn(f"model.freeze={mode} without model.init_from: the frozen layers keep their random initial weights")
    at = config.train.unfreeze_at_epoch
    if at and mode == "none":
        lines.append(f"train.unfreeze_at_epoch={at}: nothing to do, model.freeze=none trains everything already")
    elif at > config.train.epochs:
        lines.append(f"train.unfreeze_at_epoch={at} is after the last epoch ({config.train.epochs}): never")
    callbacks = unfreeze_callbacks(config, show)
    if config.train.head_lr_mult != 1.0:
        mult = config.train.head_lr_mult
        lines.append(f"train.head_lr_mult={mult:g}: the head trains at lr x {mult:g}; the logged lr is the body's")
    return FineTuning(record, lines, callbacks)


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
        copied = _listing(mapping["copied"]) if mapping["copied"] else "none"
        new = _listing(mapping["new"]) if mapping["new"] else "none"
        line = (
            f"model.init_from: head replaced ({', '.join(record['replaced'])}) for this run's "
            f"{len(mapping['copied']) + len(mapping['new'])} classes: rows copied from the source for {copied}; "
            f"new (fresh rows): {new}"
        )
        if mapping["dropped"]:
            line += f"; source classes not in this run: {_listing(mapping['dropped'])}"
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
