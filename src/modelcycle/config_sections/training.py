"""The sections a training run reads: run, data, model (with LoRA), train, eval, distill, tune."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from modelcycle.config_sections.base import Section, parse_freeze
from modelcycle.errors import ConfigError


class RunSection(Section):
    name: str = Field("run", description="the run's folder name under run.dir (runs/<name>/)")
    dir: str = Field("runs", description="the folder that holds the run folders")
    task: str = Field(
        "classify",
        description=(
            "what one step computes, and so what data.root holds: classify (images), text_classify (JSONL texts), "
            "lm, sft, reward, dpo, ppo (language models), distill, or a task of your own (docs/tasks.md)"
        ),
    )

    @field_validator("task")
    @classmethod
    def _task_name(cls, value: str) -> str:
        if not value.isidentifier():
            raise ValueError("a task name is letters, digits and underscores (classify, lm, sft, ...)")
        return value


class DataSection(Section):
    root: str | None = Field(None, description="a folder written by `modelcycle prepare`")
    image_size: int = Field(64, ge=8, description="side in pixels images are resized and cropped to")
    channels: int | None = Field(
        None, description="input channels; None: 1 if every image is greyscale, else 3 (from stats.json)"
    )
    mean: list[float] | None = Field(
        None, description="per-channel mean for normalising; None: 0.5 for greyscale, ImageNet statistics for RGB"
    )
    std: list[float] | None = Field(
        None,
        description=(
            "per-channel standard deviation for normalising; None: 0.5 for greyscale, ImageNet statistics for RGB"
        ),
    )
    resize_to: int | None = Field(
        None,
        ge=8,
        description=(
            "evaluation and serving: the side images are resized to before the centre crop of data.image_size "
            "(the shorter side, or both with data.keep_aspect=false); None: data.image_size. A Hugging Face "
            "model.name sets it from its preprocessor_config.json"
        ),
    )
    keep_aspect: bool = Field(
        True,
        description=(
            "evaluation and serving: false resizes both sides to data.resize_to (stretching the image, as ViT's "
            "image processor does) instead of the shorter side"
        ),
    )
    hflip: bool = Field(True, description="training augmentation: flip images left-right at random")
    crop_scale: tuple[float, float] = Field(
        (0.6, 1.0), description="training augmentation: the random crop's area, as a fraction (min, max) of the image"
    )
    crop_ratio: tuple[float, float] = Field(
        (0.75, 1.333), description="training augmentation: the random crop's aspect ratio (min, max)"
    )
    color_jitter: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="training augmentation: strength of random brightness/contrast/saturation changes; 0 = off",
    )
    cache: bool | Literal["auto"] = Field("auto", description="keep decoded images in memory when they fit")
    cache_max_mb: int = Field(2048, description="largest in-memory image cache, in MB, that data.cache=auto allows")
    workers: int | None = Field(None, description="data-loading worker processes; None: chosen from the CPU count")
    max_length: int = Field(
        128, ge=8, description="text: tokens per example; longer texts are cut (batches pad to their longest)"
    )
    train_files: list[str] = Field(
        default_factory=list,
        description=(
            "reward, dpo, ppo: preference files or folders for training (formats in docs/lm-rlhf.md), instead of "
            "data.root"
        ),
    )
    val_files: list[str] = Field(
        default_factory=list, description="reward, dpo, ppo: preference files or folders for validation"
    )


class LoraSection(Section):
    """LoRA (Hu et al. 2021) for Hugging Face models: the pretrained weights stay frozen and each
    targeted Linear layer learns a rank-r update; the classifier head trains in full."""

    r: int = Field(0, ge=0, description="rank of the update; 0: LoRA off")
    alpha: float = Field(16.0, gt=0, description="the update is scaled by alpha / r")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the LoRA update's input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["query", "value"],
        description="names of the Linear layers that get an update (the default: BERT's attention projections)",
    )


class ModelSection(Section):
    name: str | None = Field(
        None,
        description=(
            "a registry name or path/to/file.py:build (images), a Hugging Face folder or Hub id, llama (lm); None: "
            "the task's default (simple_cnn for images, llama for lm and sft) unless model.init_from or ppo.policy "
            "decides"
        ),
    )
    args: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the builder")
    init_from: str | None = Field(
        None, description="a run folder or model package whose weights start this run (fine-tuning)"
    )
    weights: str | None = Field(
        None,
        description=(
            "images: a checkpoint file of plain tensors whose weights start this run, such as torchvision's "
            "resnet18-f37072fd.pth; the head is replaced when the classes differ (models/pretrained.py)"
        ),
    )
    freeze: str = Field("none", description="none | backbone | all_but_last:N (see models/freeze.py)")
    lora: LoraSection = Field(default_factory=LoraSection, description="text models only (models/text.py)")

    @field_validator("freeze")
    @classmethod
    def _freeze_mode(cls, value: str) -> str:
        try:
            return str(parse_freeze(value))
        except ConfigError as exc:  # a ValueError lets the loader say where the bad value was
            raise ValueError(str(exc).removeprefix("model.freeze: ")) from None


class TrainSection(Section):
    epochs: int = Field(10, ge=1, description="passes over the training data")
    batch_size: int = Field(
        64,
        ge=1,
        description="examples per optimizer step (with several processes: the global batch, split evenly over them)",
    )
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("adamw", description="sgd, adam or adamw")
    momentum: float = Field(0.9, description="SGD momentum (optimizer=sgd only)")
    nesterov: bool = Field(False, description="Nesterov momentum (optimizer=sgd only)")
    weight_decay: float = Field(0.0, ge=0, description="weight decay (decoupled for adamw, L2 for sgd and adam)")
    decay_norm_and_bias: bool = Field(
        False,
        description="false: biases and norm layers (1-D parameters) get no weight decay; true: every parameter does",
    )
    l1: float = Field(0.0, ge=0, description="L1 penalty on weight matrices and kernels, added to the loss")
    schedule: Literal["none", "cosine", "step", "onecycle"] = Field(
        "cosine", description="learning-rate schedule after warm-up: none, cosine, step or onecycle"
    )
    warmup_epochs: float = Field(0.0, ge=0, description="epochs of linear learning-rate warm-up (fractions allowed)")
    step_size: int = Field(30, ge=1, description="epochs between decays for schedule=step")
    gamma: float = Field(0.1, description="the factor schedule=step multiplies the learning rate by")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="share of probability spread over the other classes in the loss (0 = hard labels)"
    )
    accumulate: int = Field(1, ge=1, description="micro-batches per optimizer step")
    clip_grad: float | None = Field(None, description="clip gradients to this global norm; None: no clipping")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="fp32, or mixed precision in bf16 or fp16 (fp16 uses a gradient scaler)"
    )
    ema: bool = Field(False, description="keep an exponential moving average of the weights and evaluate/package it")
    ema_decay: float = Field(0.999, gt=0, lt=1, description="the EMA's decay per optimizer step")
    channels_last: bool = Field(False, description="channels_last memory format for conv nets (often faster on GPU)")
    compile: bool = Field(False, description="torch.compile the model")
    early_stop_patience: int = Field(0, ge=0, description="epochs without improvement; 0 = off")
    monitor: str = Field(
        "val_accuracy", description="the validation metric that picks best.pt, early stopping and tuning"
    )
    monitor_mode: Literal["auto", "max", "min"] = Field(
        "auto", description="whether train.monitor is maximised or minimised; auto: min for a loss, max otherwise"
    )
    seed: int = Field(
        0, description="seed for weights, data order and augmentation (runs with the same seed give the same weights)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto (cuda when available), cpu or cuda")
    checkpoint_every: int = Field(0, ge=0, description="optimizer steps between last.pt saves; 0 = epochs only")
    keep_checkpoints: int = Field(1, ge=1, description="step-numbered checkpoints kept besides last.pt")
    log_every: int = Field(20, ge=1, description="optimizer steps between logged training metrics")
    unfreeze_at_epoch: int = Field(
        0, ge=0, description="with model.freeze: from this epoch (1-based) on all train; 0 = never"
    )
    head_lr_mult: float = Field(1.0, gt=0, description="the head's learning rate is train.lr times this")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: a full model per process; fsdp: parameters sharded (FSDP2)"
    )
    sync_bn: bool = Field(False, description="BatchNorm statistics over the global batch (SyncBatchNorm: CUDA only)")

    @property
    def monitor_direction(self) -> Literal["max", "min"]:
        """``auto``: a loss is minimised, anything else (accuracy, top-5) maximised; the trainer's
        best checkpoint and the tuner's study direction both follow this one rule."""
        if self.monitor_mode != "auto":
            return self.monitor_mode
        return "min" if "loss" in self.monitor else "max"


class EvalSection(Section):
    batch_size: int = Field(256, ge=1, description="images per batch in `modelcycle evaluate`")
    topk: int = Field(
        5, ge=1, description="k of the top-k accuracy reported as top5 (min(k, classes) for fewer classes)"
    )
    mistakes: int = Field(36, ge=0, description="misclassified images shown in the report's mistakes.png")


class DistillSection(Section):
    """Knowledge distillation (``modelcycle distill``): the run's model learns from a teacher's
    logits as well as from the labels. T=4 and alpha=0.9 are the usual starting point (Hinton et
    al. 2015 and most reproductions): soft enough to show which wrong classes look alike, with
    some weight left on the labels in case the teacher is wrong."""

    teacher: str | None = Field(
        None, description="a run folder or model package (PyTorch weights); None: no distillation"
    )
    temperature: float = Field(4.0, gt=0, description="softens both distributions; 1 = the plain softmax")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the teacher's soft targets; 1 - alpha on the labels")


class TuneSection(Section):
    """``modelcycle tune``: defaults a recipe may carry; the command's flags override them. Each
    trial is an ordinary run in ``<run.dir>/<study>/trial-NNNN`` (see docs/tune.md)."""

    space: str | None = Field(None, description="the search-space YAML (--space)")
    trials: int = Field(20, ge=1, description="trials the study should have finished; running again continues up to it")
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="tpe (Optuna's TPE), random or grid")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="median, hyperband or none: how unpromising trials are stopped early"
    )
    study: str | None = Field(None, description="the study's name (its folder under run.dir); None: <run.name>-tune")
    storage: str | None = Field(None, description="an SQLAlchemy URL; None: sqlite:///<run.dir>/<study>/study.db")
    workers: int = Field(1, ge=1, description="processes on this machine, all working on the one study")
    seed: int = Field(0, description="sampler seed; each worker and each resumed session derives its own from it")
    startup_trials: int = Field(10, ge=0, description="TPE: random trials before its model takes over")
    prune_startup_trials: int = Field(5, ge=0, description="median: trials that must finish before any is pruned")
    prune_warmup_epochs: int = Field(1, ge=1, description="median: epochs every trial runs before it can be pruned")
    heartbeat_s: int = Field(10, ge=1, description="how often a running trial says it is alive")
    grace_s: int = Field(
        60, ge=2, description="silent this long: its worker died, the trial is marked FAIL and retried once"
    )
