"""Text classification (``run.task=text_classify``): a Hugging Face encoder with a classifier
head on JSONL texts. One step is ClassifyTask's step on the model's logits, so the loss, label
smoothing, the summed metrics and their names (``train.monitor=val_accuracy``) are the same as
for images, and the engine cannot tell the two apart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from modelcycle.config import Config
from modelcycle.data.text import TextData, text_loader
from modelcycle.engine import distributed
from modelcycle.errors import ConfigError
from modelcycle.models import transfer
from modelcycle.progress import info
from modelcycle.tasks.images import ClassifyTask
from modelcycle.tasks.media import ConfusionPicture
from modelcycle.tasks.plugin import TEXT_MODEL_KEYS, SetupContext, TaskParts, TaskPlugin


def logits_of(model: nn.Module) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    return lambda inputs: model(**inputs).logits


class TextClassifyTask(ClassifyTask):
    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return super().training_step(logits_of(model), batch)

    def validation_step(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        return super().validation_step(logits_of(model), batch)


@dataclass
class TextSetup:
    task: TextClassifyTask
    model: nn.Module
    train_loader: DataLoader
    val_loader: DataLoader | None
    meta: dict  # the package's modelcycle.json, less what training adds (metrics, weights)
    write_package: Callable[[Path, dict, dict], Path]


def setup(config: Config) -> TextSetup:
    """Data, tokenizer, model (frozen or with LoRA as configured) and task for a text run."""
    from modelcycle.models.text import apply_tuning, build_text_model, check_tuning, package_writer, tuning_line

    _refuse_image_only_settings(config)
    check_tuning(config.model)
    data = TextData.open(config.data.root)
    t, max_length = config.train, config.data.max_length
    torch.manual_seed(t.seed)
    model, tokenizer, architecture = build_text_model(config.model, data.classes, max_length)
    model, tuning = apply_tuning(model, config.model)
    start = "pretrained" if architecture["pretrained"] else "random weights"
    info(f"{config.model.name} ({start}): {tuning_line(tuning)}")
    world = distributed.world_size()
    distributed.split_batch(t.batch_size, world)  # the global batch, split evenly over the processes
    shard = {"rank": distributed.rank(), "world": world, "seed": t.seed}
    train_loader = text_loader(data.split("train"), tokenizer, max_length, t.batch_size, train=True, **shard)
    val_loader = (
        text_loader(data.split("val"), tokenizer, max_length, config.eval.batch_size, train=False, **shard)
        if data.has_split("val")
        else None
    )
    meta = {
        "task": "text_classify",
        "backend": "torch",
        "layout": "transformers",  # config.json + model.safetensors + tokenizer files
        "architecture": architecture,
        "classes": data.classes,
        "preprocessing": {
            "tokenizer": "tokenizer.json",
            "max_length": max_length,
            "truncation": "texts longer than max_length tokens are cut",
            "padding": "per batch, to its longest text (attention_mask marks real tokens)",
        },
        "fine_tuning": {**tuning, "merged": tuning["lora"] is not None},
        "data_root": str(data.root.resolve()),
    }
    return TextSetup(
        TextClassifyTask(len(data.classes), t.label_smoothing),
        model,
        train_loader,
        val_loader,
        meta,
        package_writer(model, tokenizer),
    )


def _refuse_image_only_settings(config: Config) -> None:
    if not config.data.root:
        raise ConfigError(
            "data.root is not set; pass data.root=PATH to a folder with train.jsonl and val.jsonl "
            "(`modelcycle datasets pydoc-topics --out data/pydoc-topics` writes one)"
        )
    if config.model.init_from:
        raise ConfigError(
            "model.init_from: a text run starts from the model folder in model.name; "
            "set model.name=RUN/model to fine-tune an earlier text run"
        )
    if config.model.lora.r and config.train.unfreeze_at_epoch:
        raise ConfigError(
            "train.unfreeze_at_epoch with model.lora.r: LoRA never trains the pretrained weights; "
            "use model.freeze with train.unfreeze_at_epoch, or LoRA alone"
        )


def _setup(config: Config, ctx: SetupContext) -> TaskParts:
    parts = setup(config)  # applies model.freeze or LoRA itself
    callbacks = [
        *transfer.unfreeze_callbacks(config, ctx.progress),
        ConfusionPicture(parts.task, parts.meta["classes"]),
    ]
    return TaskParts(
        parts.task, parts.model, parts.train_loader, parts.val_loader, parts.meta, parts.write_package, callbacks
    )


PLUGIN = TaskPlugin(
    name="text_classify",
    setup=_setup,
    evaluate="texts",
    predict="texts",
    summary_metrics=("val_accuracy", "val_loss"),
    view="classification",
    package_kind="hf_sequence_classifier",
    serve_protocols=("predict_v1", "kserve_v2"),
    export_formats=("onnx",),
    reads=("data.root", "data.max_length", *TEXT_MODEL_KEYS),  # model.init_from only to refuse it, with what to do
    description="text classification: a Hugging Face encoder with a classifier head on JSONL texts",
)
