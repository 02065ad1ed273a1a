"""Hugging Face image classifiers (any ``AutoModelForImageClassification``: ViT, DeiT, ResNet,
ConvNeXt, MobileNet, EfficientNet, Swin ...) as image models of the classify task.

``model.name`` is a local model folder (``config.json`` + safetensors weights +
``preprocessor_config.json``, such as an earlier run's ``model/`` package) or the Hub id of one
in the local Hugging Face cache (models/hub.py); nothing reaches the network. The run gets a new
head for its classes (``id2label``/``label2id`` set, a head of another size re-initialised), its
preprocessing from the image processor (models/hf_image_processing.py), ``model.freeze`` or
LoRA (``model.lora.*``), and its package in the Hugging Face layout, so that
``AutoModelForImageClassification`` and ``AutoImageProcessor`` load it as it is.

Inside modelcycle the model is a :class:`PixelClassifier`: pixels in, logits out, as our own
image models, so the step, distillation, evaluate, export and serve take it unchanged.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
from torch import nn

from modelcycle.config import DataSection, ModelSection
from modelcycle.errors import ConfigError, UserError
from modelcycle.models import hf, hf_image_processing, hub
from modelcycle.models.freeze import apply_freeze
from modelcycle.models.registry import REGISTRY, names_code
from modelcycle.runs import MANIFEST

HEAD = "classifier"  # the head's name in every transformers image classifier
LORA_DEFAULTS = (("query", "value"), ("q_proj", "v_proj"))  # model.lora.target_modules left unset
PROCESSOR_KEYS = ("image_size", "channels", "mean", "std", "resize_to", "keep_aspect")  # data.* it decides


class PixelClassifier(nn.Module):
    """A transformers image classifier behind our image models' interface: ``model(pixels) -> logits``.
    ``flip_channels``: the model reads BGR (MobileViT), our pipeline gives RGB."""

    wrapped_head = HEAD  # models/freeze.py finds the head by this name below the wrapper

    def __init__(self, model: nn.Module, flip_channels: bool = False):
        super().__init__()
        self.model = model
        self.flip_channels = flip_channels

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.flip_channels:
            pixels = pixels.flip(1)
        return self.model(pixel_values=pixels).logits


def folder_of(name: str | None) -> Path | None:
    """The Hugging Face model folder ``model.name`` names, or None when it names one of ours
    (a registry name or a Python file) or nothing (the registry then says what it knows)."""
    if name is None or name in REGISTRY or names_code(name):
        return None
    path = Path(name)
    for folder in (path, path / "model"):
        if (folder / "config.json").is_file():
            return folder
    if repo := hub.hub_id(name):
        return hub.snapshot(repo)
    if (path / MANIFEST).is_file() or (path / "model" / MANIFEST).is_file():
        raise ConfigError(
            f"model.name={name} is a package of a modelcycle architecture, not a Hugging Face model; to start from "
            f"its weights set model.init_from={name} and model.name to its architecture"
        )
    if path.is_dir():
        raise ConfigError(
            f"model.name={name} is a folder without config.json, so not a Hugging Face model; give a folder saved "
            "with save_pretrained (config.json, model.safetensors, preprocessor_config.json) or a Hub id"
        )
    return None


def image_config(folder: Path, name: str):
    """The transformers config of ``folder``, or a ConfigError when it is no image model."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    try:
        with hf.quiet():
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"model.name={name}: transformers cannot read {folder}/config.json: {exc}") from None
    if config.model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        what = ", ".join(config.architectures or []) or config.model_type
        raise ConfigError(
            f"model.name={name} holds a {config.model_type} model ({what}), which AutoModelForImageClassification "
            "cannot build: the image task takes image models (ViT, DeiT, ResNet, ConvNeXt, MobileNet, EfficientNet, "
            "Swin ...); a text model trains with run.task=text_classify"
        )
    return config


def preprocessing(folder: Path, name: str) -> dict:
    """The run's preprocessing, from the image processor of the model in ``folder``."""
    return hf_image_processing.preprocessing(folder, image_config(folder, name).num_channels)


def data_section(data: DataSection, preprocessing: dict) -> DataSection:
    """``data`` with the image processor's size, channels and normalisation. A key the user set
    to another value is refused: the model was trained on its processor's input, and a silent
    winner either way would surprise half the users."""
    clashes = [
        f"data.{key}={getattr(data, key)} (the processor's: {preprocessing[key]})"
        for key in PROCESSOR_KEYS
        if key in data.model_fields_set and not _same(getattr(data, key), preprocessing[key])
    ]
    if clashes:
        raise ConfigError(
            f"{'; '.join(clashes)}: a Hugging Face model.name takes its preprocessing from its "
            f"{hf_image_processing.FILE}, which decides. Drop {'these keys' if len(clashes) > 1 else 'the key'} "
            f"from the recipe and the command line, or change {hf_image_processing.FILE} in a copy of the model folder"
        )
    return data.model_copy(update={key: preprocessing[key] for key in PROCESSOR_KEYS})


def _same(a, b) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(
            math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(a, b, strict=True)
        )
    return a == b


def build(cfg: ModelSection, folder: Path, classes: list[str], preprocessing: dict) -> tuple[nn.Module, dict, dict]:
    """(model that trains, architecture record, tuning record) for ``classes``; call under a
    seeded RNG, as the new head (and every weight, from random) is drawn from it."""
    from transformers import AutoModelForImageClassification

    from modelcycle.models.text import apply_tuning, check_tuning

    check_tuning(cfg)
    config = image_config(folder, cfg.name)
    pretrained = hf.apply_args(config, cfg.args, folder)
    config.num_labels = len(classes)
    config.id2label = dict(enumerate(classes))
    config.label2id = {label: i for i, label in enumerate(classes)}
    with hf.quiet():
        if pretrained:
            hf.require_safetensors(folder)
            # ignore_mismatched_sizes: the source's head (ImageNet's 1,000 classes) is replaced by a new one
            model = AutoModelForImageClassification.from_pretrained(
                folder, config=config, local_files_only=True, use_safetensors=True, ignore_mismatched_sizes=True,
                dtype=torch.float32,
            )  # fmt: skip
        else:
            model = AutoModelForImageClassification.from_config(config, dtype=torch.float32)
    model = PixelClassifier(model, preprocessing["flip_channels"])
    parameters = sum(p.numel() for p in model.parameters())
    if cfg.lora.r:
        model, tuning = apply_tuning(
            model, cfg, task_type=None, targets=_lora_targets(model, cfg), modules_to_save=[HEAD]
        )
    else:
        report = apply_freeze(model, cfg.freeze)
        tuning = {"freeze": report.mode, "lora": None, "trainable": report.trainable, "total": report.total}
    record = {
        "name": cfg.name,
        "layout": "transformers",
        "folder": str(folder.resolve()),
        "revision": hub.snapshot_commit(folder),  # the commit, for a Hub id opened from the cache
        "class": type(model_of(model)).__name__,
        "model_type": config.model_type,
        "architectures": [type(model_of(model)).__name__],  # what the package's config.json says
        "pretrained": pretrained,
        "args": dict(cfg.args),
        "parameters": parameters,
        "in_channels": preprocessing["channels"],
        "num_classes": len(classes),
        "image_size": preprocessing["image_size"],
    }
    return model, record, tuning


def _lora_targets(model: nn.Module, cfg: ModelSection) -> list[str]:
    """model.lora.target_modules as set; left unset, the attention's query and value projections
    under the names this model gives them (BERT's and older ViTs' query/value, q_proj/v_proj in
    transformers 5's ViT)."""
    if "target_modules" in cfg.lora.model_fields_set:
        return list(cfg.lora.target_modules)
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    return next((list(pair) for pair in LORA_DEFAULTS if set(pair) <= names), list(cfg.lora.target_modules))


def model_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a PixelClassifier (LoRA-wrapped or not)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = inner.model
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def package_writer(model: nn.Module, source: Path):
    """``write(out, weights, manifest)``: the Hugging Face layout (config.json with the run's
    labels, model.safetensors in the source's dtypes, LoRA merged) plus the source's
    preprocessor_config.json as it is, and modelcycle.json."""
    from modelcycle.models.text import package_writer as hugging_face_writer

    def processor(folder: Path, _model: nn.Module, _weights: dict) -> None:
        shutil.copyfile(source / hf_image_processing.FILE, folder / hf_image_processing.FILE)

    return hugging_face_writer(model, None, also=processor, source=source, inner=lambda m: m.model)


def load_package(folder: Path, preprocessing: dict) -> nn.Module:
    """A package's image classifier (eval mode), behind the pixels -> logits interface."""
    from transformers import AutoModelForImageClassification

    hf.require_safetensors(folder)
    try:
        with hf.quiet():
            model = AutoModelForImageClassification.from_pretrained(
                folder, local_files_only=True, use_safetensors=True, dtype=torch.float32
            )
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{folder}: transformers could not load the image classifier: {exc}") from None
    return PixelClassifier(model, bool(preprocessing.get("flip_channels"))).eval()
