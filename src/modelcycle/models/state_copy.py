"""Copying a source's tensors into a model built for a new run: the one rule under fine-tuning
from a run (``model.init_from``, models/transfer.py) and from a checkpoint file (``model.weights``,
models/pretrained.py).

Everything must fit except the head when the classes differ: it is rebuilt for the new classes,
keeping the rows of classes the source knew by the same name. A first convolution that differs
only in its input channels (grey <-> RGB) is adapted. Anything else that does not fit is an error
naming each tensor, and the model is left unchanged.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
from torch import nn

from modelcycle.errors import ConfigError
from modelcycle.models.freeze import HEAD_NAMES, head_name, within

SHOWN = 10  # mismatched layers / class names listed before "and N more"
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm's statistics


class WeightsMismatch(ConfigError):
    """The source's tensors do not fit the model; ``problems`` names each tensor, ``summary`` counts them."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = [text for _, text in problems]
        counts = {kind: sum(k == kind for k, _ in problems) for kind in ("shape", "missing", "unexpected")}
        words = ("differ in shape", "missing in the source", "in the source but not in this run's model")
        self.summary = ", ".join(f"{n} {w}" for n, w in zip(counts.values(), words, strict=True) if n)
        super().__init__(f"the source's weights do not fit the model ({self.summary}):\n  " + self.text())

    def text(self) -> str:
        return listing(self.problems, "\n  ")


@dataclass
class Transfer:
    """What copying a source's weights into a model did."""

    loaded: list[str] = field(default_factory=list)  # tensors copied whole (or channel-adapted)
    replaced: list[str] = field(default_factory=list)  # class-indexed head tensors rebuilt for the new classes
    copied: list[str] = field(default_factory=list)  # the run's classes whose head rows came from the source
    new: list[str] = field(default_factory=list)  # the run's classes the source did not know: fresh rows
    dropped: list[str] = field(default_factory=list)  # the source's classes this run does not have
    adapted: list[str] = field(default_factory=list)  # input-channel adaptations, in words
    fresh: list[str] = field(default_factory=list)  # tensors left at their initialisation on purpose


def transfer_weights(
    model: nn.Module,
    source_model: nn.Module,
    source_classes: list[str],
    classes: list[str],
    source_channels: int,
    channels: int,
) -> Transfer:
    """Copy ``source_model`` into ``model`` (in place) or change nothing and raise WeightsMismatch."""
    parameters = {n for n, _ in model.named_parameters()} | {n for n, _ in source_model.named_parameters()}
    return copy_state(model, source_model.state_dict(), source_classes, classes, source_channels, channels, parameters)


def copy_state(
    model: nn.Module,
    source: dict[str, torch.Tensor],
    source_classes: list[str] | int,
    classes: list[str],
    source_channels: int,
    channels: int,
    parameters: Collection[str] | None = None,
    fresh: Collection[str] = (),
    key: str = "model.init_from",
) -> Transfer:
    """Copy the tensors of ``source`` into ``model`` (in place) or change nothing and raise WeightsMismatch.

    ``source_classes``: the source's class names, or only their count for a file that names none
    (then no head rows carry over unless the count is the run's). ``fresh``: tensors of the model to
    leave at their initialisation whatever the source holds. Mismatches are named by parameter
    (``parameters``; by default every tensor but BatchNorm's statistics); the statistics only when
    no parameter differs, since they follow their layer's parameters and would bury them.
    """
    target = model.state_dict()
    if parameters is None:
        parameters = {k for k in {*target, *source} if not k.endswith(BUFFERS)}
    named = not isinstance(source_classes, int)
    count = len(source_classes) if named else source_classes
    same = list(source_classes) == list(classes) if named else count == len(classes)
    head = "" if same else _head(model, key)
    index = {name: i for i, name in enumerate(source_classes)} if named else {}
    out = Transfer()
    problems, state = [], {}
    for name, want in target.items():
        have = source.get(name)
        if name in fresh:
            out.fresh.append(name)
        elif have is None:
            continue
        elif head and within(name, head) and _class_rows(have, want, count, len(classes)):
            rows = want.detach().clone()
            for i, label in enumerate(classes):
                if label in index:
                    rows[i] = have[index[label]]
            state[name] = rows
            out.replaced.append(name)
        elif have.shape == want.shape:
            state[name] = have
            out.loaded.append(name)
        elif not out.adapted and (adapted := _adapt_input(have, want, source_channels, channels)) is not None:
            state[name], how = adapted
            out.loaded.append(name)
            out.adapted.append(f"{name}: {source_channels} -> {channels} input channels ({how})")
        else:
            problems.append((name, "shape", f"{name}: source {list(have.shape)}, this run {list(want.shape)}"))
    problems += [
        (k, "missing", f"{k}: missing in the source (this run {list(v.shape)})")
        for k, v in target.items()
        if k not in source and k not in fresh
    ]
    problems += [
        (k, "unexpected", f"{k}: in the source {list(v.shape)}, not in this run's model")
        for k, v in source.items()
        if k not in target
    ]
    if problems:
        shown = [(kind, text) for name, kind, text in problems if name in parameters]
        raise WeightsMismatch(shown or [(kind, text) for _, kind, text in problems])
    model.load_state_dict({**target, **state})
    if head:
        out.copied = [c for c in classes if c in index]
        out.new = [c for c in classes if c not in index]
        out.dropped = [c for c in source_classes if c not in set(classes)] if named else []
    else:
        out.copied = list(classes)
    return out


def _class_rows(have: torch.Tensor, want: torch.Tensor, source_count: int, count: int) -> bool:
    """A head tensor with one row per class (a final Linear's weight and bias)."""
    return (
        have.dim() > 0 and have.shape[0] == source_count and want.shape[0] == count and have.shape[1:] == want.shape[1:]
    )


def _head(model: nn.Module, key: str) -> str:
    try:
        return head_name(model)
    except ConfigError:
        raise ConfigError(
            f"{key}: this run's classes differ from the source's, so the head must be replaced, but the "
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


def listing(items: list[str], sep: str = ", ") -> str:
    more = len(items) - SHOWN
    return sep.join(items[:SHOWN]) + (f"{sep}and {more} more" if more > 0 else "")
