"""``model.weights=FILE``: an image run starts from a checkpoint file of plain tensors, such as
torchvision's ImageNet files (``resnet18-f37072fd.pth``: a bare state_dict). Our ResNets and
MobileNetV2 carry torchvision's module names (models/vision.py), so those files fit as they are.

The file is read with ``torch.load(weights_only=True)`` (or as safetensors), so it cannot run code.
Every tensor must fit (models/state_copy.py, the rule ``model.init_from`` follows too), except:

- the head (``fc`` / ``classifier.1``) when the run's class count is not the file's (1000 for
  ImageNet): it starts fresh. The file names no classes, so no rows can carry over by name;
- grey runs: the file's RGB ``conv1`` is summed over the colour channels;
- a ResNet built with ``stem=small`` from a file made for the ImageNet stem: the small stem's 3x3
  stride-1 ``conv1`` cannot take a 7x7 kernel, so ``conv1`` and the ``bn1`` that normalises its
  output start fresh and everything after the stem loads. We load rather than refuse because the
  residual stages are most of what pretraining learnt, and they still apply to tiny images.

With ``model.weights`` a builder that takes ``stem`` gets ``stem=imagenet`` unless ``model.args``
names one, since that is the stem the file was trained with.
"""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from modelcycle.config import Config
from modelcycle.errors import ConfigError
from modelcycle.models import vision
from modelcycle.models.freeze import HEAD_NAMES, within
from modelcycle.models.registry import REGISTRY
from modelcycle.models.state_copy import WeightsMismatch, copy_state
from modelcycle.runs import sha256_file

TORCHVISION_LAYOUT = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")  # what a file's keys are compared with
IMAGENET_SIZE = 224
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
GREY_MEAN, GREY_STD = [0.449], [0.226]  # ImageNet's, averaged over the colour channels: fits a summed conv1


def builder_args(config: Config) -> dict:
    """``model.args`` as the run builds and records them: ``stem=imagenet`` added for ``model.weights``."""
    args = dict(config.model.args)
    builder = REGISTRY.get(config.model.name or "")
    takes_stem = builder is not None and "stem" in inspect.signature(builder).parameters
    if config.model.weights and takes_stem and "stem" not in args:
        args["stem"] = "imagenet"
    return args


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors by name; a clear ConfigError for anything but a flat state_dict."""
    if not path.is_file():
        raise ConfigError(
            f"model.weights: {path} does not exist; give a checkpoint file of plain tensors such as torchvision's "
            "resnet18-f37072fd.pth (for a modelcycle run or package, use model.init_from)"
        )
    try:
        state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, "cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(
            f"model.weights: {path} holds pickled Python objects besides tensors, which "
            "torch.load(weights_only=True) refuses (loading them could run code); save a plain "
            "state_dict with torch.save(model.state_dict(), FILE)"
        ) from None
    except (SafetensorError, RuntimeError, OSError, ValueError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"model.weights: {path} is not a file of plain tensors that loads with torch.load(weights_only=True) "
            f"or safetensors ({first}); save one with torch.save(model.state_dict(), FILE)"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = f"a dict with keys {', '.join(map(str, list(state)[:6]))}" if isinstance(state, dict) else "no dict"
        raise ConfigError(
            f"model.weights: {path} holds {found}, not a state_dict (names -> tensors); "
            "for a checkpoint of a modelcycle run use model.init_from=RUN, else save model.state_dict() alone"
        )
    return state


def load_weights(config: Config, model: nn.Module, classes: list[str], preprocessing: dict) -> dict:
    """Copy ``model.weights`` into ``model`` (in place); returns the package's ``pretrained`` record."""
    path = Path(config.model.weights)
    state = read_state(path)
    if vision.previous_layout(state):
        raise ConfigError(
            f"model.weights: {path} holds modelcycle's previous ResNet/MobileNetV2 layout (features.N.body, head); "
            "resnet18/34/50 and mobilenet_v2 now use torchvision's module names. Retrain the source with this "
            f"version, or use {vision.PREVIOUS_VERSION}"
        )
    target = model.state_dict()
    first = next((k for k, v in target.items() if v.dim() == 4), None)  # the first convolution's weight
    have = state.get(first)
    source_channels = have.shape[1] if have is not None and have.dim() == 4 else preprocessing["channels"]
    count = _file_classes(model, state, len(classes))
    fresh = _fresh_stem(model, state)
    try:
        done = copy_state(
            model, state, count, classes, source_channels, preprocessing["channels"], fresh=fresh, key="model.weights"
        )
    except WeightsMismatch as exc:
        args = builder_args(config)
        raise ConfigError(
            f"model.weights: {path} does not fit this run's model (model.name={config.model.name} "
            f"model.args={args}, in_channels={preprocessing['channels']}): {exc.summary}\n  {exc.text()}\n"
            f"{_hint(state, count)}"
        ) from None
    return {
        "file": str(path.resolve()),
        "sha256": sha256_file(path),
        "tensors": len(target),
        "loaded": len(done.loaded),
        "file_classes": count,
        "replaced": done.replaced,
        "fresh": done.fresh,
        "adapted": done.adapted,
        "notes": _notes(config, preprocessing, count, len(classes), done.fresh),
    }


def describe(record: dict) -> list[str]:
    """The ``pretrained`` record in words, one line per fact, for events.log and the terminal."""
    lines = [
        f"model.weights: {record['loaded']} of {record['tensors']} tensors loaded from {record['file']} "
        f"(sha256 {record['sha256'][:12]})"
    ]
    if record["replaced"]:
        lines.append(
            f"model.weights: head replaced ({', '.join(record['replaced'])}): the file has {record['file_classes']} "
            "classes and names none, so the head starts fresh for this run's classes"
        )
    lines += [f"model.weights: adapted {a}" for a in record["adapted"]]
    lines += [f"model.weights: note: {n}" for n in record["notes"]]
    return lines


def _file_classes(model: nn.Module, state: dict, count: int) -> int:
    """Rows of the file's head (its class count); the run's own count where the file has no head."""
    for name, tensor in model.state_dict().items():
        head = next((h for h in HEAD_NAMES if within(name, h)), None)
        if head and name.endswith(".weight") and tensor.dim() == 2 and name in state and state[name].dim() == 2:
            return state[name].shape[0]
    return count


def _fresh_stem(model: nn.Module, state: dict) -> set[str]:
    """A small-stem ResNet and a file whose conv1 is another size: the stem's tensors stay fresh."""
    have = state.get("conv1.weight")
    if not isinstance(model, vision.ResNet) or have is None or have.shape[2:] == model.conv1.weight.shape[2:]:
        return set()
    return {name for name in model.state_dict() if within(name, "conv1") or within(name, "bn1")}


def _notes(config: Config, pre: dict, count: int, classes: int, fresh: list[str]) -> list[str]:
    notes = []
    if fresh:
        notes.append(
            f"stem=small: {', '.join(sorted({n.split('.')[0] for n in fresh}))} start fresh (the file's conv1 is "
            "for 224 px images, 7x7 stride 2; the small stem's is 3x3 stride 1) and everything after the stem is "
            "loaded; model.args.stem=imagenet loads the stem too"
        )
    if count == classes:
        notes.append(
            f"the file's head has {count} rows, as many as this run's classes: loaded as it is, so this run's "
            f"class i takes the file's class i (classes in sorted folder order)"
        )
    expected = (IMAGENET_MEAN, IMAGENET_STD) if pre["channels"] == 3 else (GREY_MEAN, GREY_STD)
    if not _close(pre["mean"], expected[0]) or not _close(pre["std"], expected[1]):
        notes.append(
            f"normalisation mean {pre['mean']} std {pre['std']}: torchvision's ImageNet files expect "
            f"data.mean={expected[0]} data.std={expected[1]}"
        )
    stem = builder_args(config).get("stem")
    if stem and vision.resolve_stem(stem, pre["image_size"]) == "imagenet" and pre["image_size"] != IMAGENET_SIZE:
        notes.append(
            f"image_size {pre['image_size']}: torchvision's ImageNet files were trained on {IMAGENET_SIZE} px "
            "images; the features carry over, at another scale"
        )
    return notes


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 5e-4 for x, y in zip(a, b, strict=True))


def _hint(state: dict, count: int) -> str:
    """What to do: the built-in architecture whose names and shapes the file has, if any."""
    for name in TORCHVISION_LAYOUT:
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised
            reference = REGISTRY[name](3, count, IMAGENET_SIZE, stem="imagenet").state_dict()
        if reference.keys() == state.keys() and all(reference[k].shape == state[k].shape for k in state):
            return f"The file has the names and shapes of torchvision's {name}: set model.name={name}"
    return (
        "model.weights takes torchvision's ResNet (resnet18/34/50) and MobileNetV2 files, or a state_dict saved "
        "from the same architecture as this run's"
    )
