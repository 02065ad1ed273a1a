"""Image classification's step and data/model set-up, shared by the classify and distill tasks
(tasks/classify.py, tasks/distill.py hold their plugins)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from modelcycle import runs
from modelcycle.config import Config
from modelcycle.data.datasets import make_loader
from modelcycle.data.manifest import PreparedData
from modelcycle.data.transforms import normalisation
from modelcycle.engine import distributed
from modelcycle.errors import ConfigError
from modelcycle.models import hf_vision, pretrained, transfer
from modelcycle.models.registry import build_model
from modelcycle.progress import info
from modelcycle.tasks.media import CONFUSION_CLASSES, BatchPictures, ConfusionPicture
from modelcycle.tasks.plugin import SetupContext, TaskParts


class ClassifyTask:
    metric_names = {"train": ("loss", "accuracy"), "val": ("loss", "accuracy", "top5")}

    def __init__(self, num_classes: int, label_smoothing: float = 0.0):
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.k = min(5, num_classes)
        self.counts_confusion = num_classes <= CONFUSION_CLASSES
        self.confusion: list | None = None  # the last validation pass's, all ranks' (tasks/media.py shows it)
        if self.k < 5:  # said once: with so few classes val_top5 is top-k, 1.0 when k is every class
            info(f"val_top5 is top-{self.k} accuracy here: {num_classes} classes, fewer than 5")

    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels = batch
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            correct = (logits.argmax(1) == labels).sum()
        return loss, {"loss": loss.detach() * labels.numel(), "correct": correct, "count": torch.tensor(labels.numel())}

    def validation_step(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = model(images).float()
        loss = F.cross_entropy(logits, labels, reduction="sum")
        topk = logits.topk(self.k, dim=1).indices
        sums = {
            "loss": loss,
            "correct": (topk[:, 0] == labels).sum(),
            "correct_top5": (topk == labels[:, None]).any(1).sum(),
            "count": torch.tensor(labels.numel()),
        }
        if self.counts_confusion:  # true x predicted counts, added and all-reduced like the others
            cells = labels * self.num_classes + topk[:, 0]
            sums["confusion"] = torch.bincount(cells, minlength=self.num_classes**2).view(self.num_classes, -1)
        return sums

    def summarize(self, sums: dict) -> dict[str, float]:
        if "confusion" in sums:
            self.confusion = sums["confusion"]
        count = max(sums.get("count", 0.0), 1.0)
        out = {"loss": sums["loss"] / count, "accuracy": sums["correct"] / count}
        if "correct_top5" in sums:
            out["top5"] = sums["correct_top5"] / count
        return out


@dataclass
class ClassifySetup:
    data: PreparedData
    channels: int
    model: nn.Module
    model_spec: dict
    task: ClassifyTask
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None
    preprocessing: dict
    hf_folder: Path | None = None  # a Hugging Face model.name's folder (models/hf_vision.py)
    tuning: dict | None = None  # what trains in it (model.freeze or LoRA), set when it was built


# What an image-classifier plugin declares (classify, and distill whose package is a classifier too)
IMAGE_PLUGIN_FIELDS = {
    "evaluate": "images",
    "predict": "images",
    "defaults": {"model": {"name": "simple_cnn"}},  # the registry's smallest model, when the recipe names none
    "summary_metrics": ("val_accuracy", "val_loss"),
    "capabilities": frozenset({"crossval", "monitor_profile", "mlflow_pytorch"}),
    "view": "classification",
    "package_kind": "vision",
    "serve_protocols": ("predict_v1", "kserve_v2"),
    "export_formats": ("onnx", "torchscript", "pt2"),
    # the data keys the loaders and the preprocessing read (data.max_length is text's), the model
    # keys (model.lora is the Hugging Face models'), and distill.* (a classify run with a teacher distils)
    "reads": (
        *("data.root", "data.image_size", "data.channels", "data.mean", "data.std", "data.hflip"),
        *("data.crop_scale", "data.crop_ratio", "data.color_jitter", "data.cache", "data.cache_max_mb", "data.workers"),
        *("data.resize_to", "data.keep_aspect", "model.lora"),  # model.lora: Hugging Face models (hf_vision.py)
        *("model.name", "model.args", "model.init_from", "model.weights", "model.freeze"),
        "distill",
    ),
}


def setup(config: Config, train_items=None, val_items=None) -> ClassifySetup:
    """Data, model and task for a classification run; ``*_items`` override the manifests (crossval)."""
    if not config.data.root:
        raise ConfigError("data.root is not set; pass data.root=PATH to a folder made by `modelcycle prepare`")
    data = PreparedData.open(config.data.root)
    channels = config.data.channels or data.channels
    hf_folder = hf_vision.folder_of(config.model.name)
    data_cfg, hf_preprocessing = config.data, None
    if hf_folder is not None:  # its image processor decides the preprocessing
        hf_preprocessing = hf_vision.preprocessing(hf_folder, config.model.name)
        data_cfg = hf_vision.data_section(config.data, hf_preprocessing)
        channels = data_cfg.channels
    train_items = train_items if train_items is not None else data.split("train")
    if val_items is None and data.has_split("val"):
        val_items = data.split("val")
    if not train_items:
        raise ConfigError(f"{data.root}/train.txt lists no images")
    t = config.train
    world = distributed.world_size()
    distributed.split_batch(t.batch_size, world)  # the global batch, split evenly over the processes
    shard = {"rank": distributed.rank(), "world": world, "seed": t.seed}
    train_loader = make_loader(train_items, data, data_cfg, channels, t.batch_size, train=True, **shard)
    val_loader = (
        make_loader(val_items, data, data_cfg, channels, config.eval.batch_size, train=False, **shard)
        if val_items
        else None
    )
    torch.manual_seed(t.seed)
    if config.model.lora.r and hf_folder is None:
        raise ConfigError(
            f"model.lora.r={config.model.lora.r}: LoRA is for Hugging Face models (model.name=FOLDER or owner/name); "
            f"for {config.model.name} use model.freeze, or set model.lora.r=0"
        )
    if hf_folder is not None:
        model, spec, tuning = hf_vision.build(config.model, hf_folder, data.classes, hf_preprocessing)
        parts = (data, channels, model, spec, ClassifyTask(len(data.classes), t.label_smoothing))
        return ClassifySetup(*parts, train_loader, val_loader, hf_preprocessing, hf_folder, tuning)
    args = pretrained.builder_args(config)  # model.weights: the stem the file was trained with
    model = build_model(config.model.name, channels, len(data.classes), config.data.image_size, args)
    mean, std = normalisation(config.data, channels)
    preprocessing = {
        "image_size": config.data.image_size,
        "channels": channels,
        "mean": mean,
        "std": std,
        "resize_to": config.data.resize_to or config.data.image_size,
        "keep_aspect": config.data.keep_aspect,
        "resize": (
            "shorter side to resize_to, centre crop image_size"
            if config.data.keep_aspect
            else "both sides to resize_to (stretched), centre crop image_size"
        ),
        "input_range": "0..255 -> (x/255 - mean)/std",
        "layout": "NCHW float32",
    }
    spec = {
        "name": config.model.name,
        "args": args,
        "in_channels": channels,
        "num_classes": len(data.classes),
        "image_size": config.data.image_size,
    }
    return ClassifySetup(
        data,
        channels,
        model,
        spec,
        ClassifyTask(len(data.classes), t.label_smoothing),
        train_loader,
        val_loader,
        preprocessing,
    )


def portable(spec: dict) -> dict:
    """A user's model file is recorded by absolute path so the package works from any folder."""
    name = spec["name"]
    if ":" in name and name.split(":", 1)[0].endswith(".py"):
        file, func = name.rsplit(":", 1)
        spec = {**spec, "name": f"{Path(file).resolve()}:{func}"}
    return spec


Attach = Callable[[Config, ClassifySetup], tuple[ClassifySetup, dict]]


def run_setup(config: Config, ctx: SetupContext, attach: Attach | None = None) -> TaskParts:
    """Data, model, step and package record of an image run; ``attach`` (a teacher's soft targets,
    tasks/distill.py) when ``distill.teacher`` is set; ``model.init_from`` / ``model.freeze`` applied."""
    parts = setup(config, ctx.train_items, ctx.val_items)
    meta = {
        "task": "classify",
        "backend": "torch",
        "architecture": portable(parts.model_spec),
        "classes": parts.data.classes,
        "preprocessing": parts.preprocessing,
        "data_root": str(parts.data.root.resolve()),
    }
    if config.distill.teacher and attach is not None:
        parts, meta["distillation"] = attach(config, parts)
    if parts.hf_folder is not None:
        return _hugging_face_parts(config, ctx, parts, meta)
    tuning = transfer.prepare(
        config, parts.model, parts.data.classes, parts.preprocessing, ctx.run_dir, ctx.resume, ctx.progress
    )
    if tuning.record:
        meta["init_from"] = tuning.record
    if tuning.weights:
        meta["pretrained"] = tuning.weights
    return TaskParts(
        parts.task,
        parts.model,
        parts.train_loader,
        parts.val_loader,
        meta,
        runs.write_package,
        [*tuning.callbacks, *pictures(parts)],
        tuning.lines,
    )


def pictures(parts: ClassifySetup) -> list:
    """What an image classifier shows in TensorBoard (tasks/media.py)."""
    pre = parts.preprocessing
    return [BatchPictures(pre["mean"], pre["std"]), ConfusionPicture(parts.task, parts.data.classes)]


def _hugging_face_parts(config: Config, ctx: SetupContext, parts: ClassifySetup, meta: dict) -> TaskParts:
    """A Hugging Face model.name's parts: model.freeze or LoRA were applied when it was built, its
    package is written in the Hugging Face layout (models/hf_vision.py)."""
    from modelcycle.models.text import tuning_line

    for key in ("init_from", "weights"):
        if getattr(config.model, key, None):
            raise ConfigError(
                f"model.{key}={getattr(config.model, key)} with the Hugging Face model.name={config.model.name}: the "
                "run starts from model.name's own weights; to go on from an earlier run of it, set "
                f"model.name=RUN/model (its package is a Hugging Face folder) and drop model.{key}"
            )
    fine_tuning = {**parts.tuning, "merged": parts.tuning["lora"] is not None}
    return TaskParts(
        parts.task,
        parts.model,
        parts.train_loader,
        parts.val_loader,
        {**meta, "layout": "transformers", "fine_tuning": fine_tuning},
        hf_vision.package_writer(parts.model, parts.hf_folder),
        [*transfer.unfreeze_callbacks(config, ctx.progress), *pictures(parts)],
        [f"{config.model.name}: {tuning_line(parts.tuning)}"],
    )
