"""The sections of the typed configuration (``modelcycle.config.Config`` holds one of each): what
every key means (each field's ``description``: the one source that `modelcycle config show` and
`config keys` print, required of every field by tests/test_config_cli.py), its default and its
bounds. modelcycle.config re-exports every name here and reads the YAML recipe and the
``key=value`` overrides into them.

This module is in the lowest layer: it imports nothing of modelcycle but ``errors``.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelcycle.errors import ConfigError

# ---------------------------------------------------------------- model.freeze's modes
# (models/freeze.py applies them to a model; the parsing lives here, in the config layer, so that
# validating a config imports nothing above it)

_FREEZE_PATTERN = re.compile(r"^(none|backbone|all_but_last:(\d+))$")


@dataclass(frozen=True)
class FreezeMode:
    kind: str  # none | backbone | all_but_last
    last: int = 0

    def __str__(self) -> str:
        return f"all_but_last:{self.last}" if self.kind == "all_but_last" else self.kind


def parse_freeze(text: str) -> FreezeMode:
    match = _FREEZE_PATTERN.match(str(text).strip())
    if not match:
        raise ConfigError(f"model.freeze: '{text}' is not a freeze mode; use none, backbone or all_but_last:N (N >= 1)")
    if match.group(2) is not None:
        last = int(match.group(2))
        if last < 1:
            raise ConfigError(
                "model.freeze: all_but_last:0 freezes as much as backbone does; use none, backbone or "
                "all_but_last:N (N >= 1)"
            )
        return FreezeMode("all_but_last", last)
    return FreezeMode(match.group(1))


# ---------------------------------------------------------------- the sections


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class ServeSection(Section):
    """``modelcycle serve``: batching, limits and auth. Every limit exists so that one bad or
    greedy client gets a clear 4xx (or a 503 to retry) instead of slowing everyone down."""

    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 serves other machines too")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on; 0: any free port (printed at start)")
    backend: Literal["auto", "torch", "onnx", "torchscript", "pt2"] = Field(
        "auto", description="auto (what the package holds), torch, onnx, torchscript or pt2"
    )
    max_batch_size: int = Field(32, ge=1, description="images run as one batch; 1 turns batching off")
    max_batch_delay_ms: float = Field(5.0, ge=0, description="how long a batch waits to fill once it has one image")
    max_queue: int = Field(256, ge=1, description="images waiting per model; beyond it requests get 503 + Retry-After")
    max_images: int = Field(64, ge=1, description="most images in one request (more: 413)")
    max_body_mb: float = Field(16.0, gt=0, description="largest request body in MB; larger gets 413")
    max_pixels: int = Field(40_000_000, ge=1, description="per image, checked before decoding (decompression bombs)")
    body_timeout_s: float = Field(10.0, gt=0, description="to receive the request body; slower gets 408")
    request_timeout_s: float = Field(30.0, gt=0, description="to answer once the body is in; longer gets 504")
    graceful_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM, how long in-flight requests may finish")
    topk: int = Field(5, ge=1, description="classes returned per image, best first")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the Bearer key")
    metrics_auth: bool = Field(
        False, description="image server: /metrics needs the API key too (default: open to scrapers)"
    )
    preprocess_threads: int | None = Field(
        None, description="threads decoding and resizing images; None: one per CPU core"
    )
    max_new_tokens: int = Field(
        512, ge=1, description="language models: most tokens one request may generate (more: 400)"
    )
    max_prompt_chars: int = Field(
        1_000_000, ge=1, description="language models: characters of a request's prompts (more: 400)"
    )
    max_prompts: int = Field(
        16, ge=1, description="language models: prompts in one /v1/completions request (more: 400)"
    )
    max_active: int = Field(
        32, ge=1, description="language models: answers decoded as one batch (continuous); the rest queue"
    )
    max_n: int = Field(8, ge=1, description="language models: choices per prompt (n; more: 400)")
    max_stop: int = Field(4, ge=1, description="language models: stop strings in one request (more: 400)")
    max_top_logprobs: int = Field(
        20, ge=0, description="language models: top_logprobs (chat) / logprobs (completions) (more: 400)"
    )


class MonitorSection(Section):
    """Production monitoring (``modelcycle serve --monitor DIR``, ``modelcycle monitor``): what the
    server logs and when a window of served traffic counts as drifted (docs/monitor.md)."""

    dir: str | None = Field(None, description="folder of the prediction log (predictions.db); None: no monitoring")
    sample_rate: float = Field(1.0, gt=0, le=1, description="fraction of served images logged (each drawn at random)")
    keep_inputs: bool = Field(
        False, description="also store each logged image as the model saw it (PNG); never by default"
    )
    # 200: a day of a small service (~10 images an hour), yet every PSI decile bin expects 20
    # values (small-sample bias ~0.045, half the 0.1 warn level) and the embedding's noise,
    # sqrt(8 / 200) = 0.2, stays well under its 0.5 alert; smaller windows get fewer PSI bins
    window: int = Field(200, ge=10, description="logged images per drift window")
    step: int | None = Field(None, ge=1, description="images between window starts; None: the window size (no overlap)")
    psi_warn: float = Field(
        0.1, gt=0, description="Population Stability Index: 0.1 = a shift worth a look (the convention)"
    )
    psi_alert: float = Field(
        0.2, gt=0, description="PSI at which a feature counts as drifted (0.2 = a significant shift, the convention)"
    )
    class_alpha: float = Field(0.001, gt=0, lt=1, description="chi-squared p-value below which the class mix drifted")
    embedding_alert: float = Field(
        0.5, gt=0, description="window-mean shift of the embedding, in reference standard deviations"
    )
    ood_quantile: float = Field(
        0.05, gt=0, lt=0.5, description="calibration: this fraction of validation images counts as OOD"
    )
    ood_alert: float = Field(0.25, gt=0, le=1, description="out-of-distribution rate of a window above which it alerts")
    confidence_drop: float = Field(
        0.15, gt=0, lt=1, description="mean confidence this far below the reference: collapse"
    )
    profile_images: int = Field(
        2000, ge=50, description="validation images the reference profile is computed on (at most)"
    )
    flush_rows: int = Field(64, ge=1, description="rows per SQLite transaction: a crash loses at most these")
    flush_s: float = Field(0.5, gt=0, description="... or what arrived in this many seconds, whichever is first")
    max_pending: int = Field(
        10_000, ge=1, description="rows waiting for the writer; beyond it rows are dropped (and counted)"
    )


with warnings.catch_warnings():
    # pydantic warns that `register` shadows ABCMeta.register, a method of the class, never of an instance:
    # as a field it reads and validates like any other, and `track.register` is the name users write
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class TrackSection(Section):
        """Optional experiment tracking: TensorBoard event files in the run folder, and MLflow
        (``pip install 'modelcycle[mlflow]'``). The run folder stays the source of truth; MLflow
        gets a copy so runs from many machines can be searched, compared and promoted through its
        model registry in one place."""

        mlflow_uri: str | None = Field(
            None,
            description="MLflow tracking URI, e.g. sqlite:///mlflow.db or http://mlflow.internal:5000; None: no MLflow",
        )
        experiment: str = Field(
            "modelcycle", description="MLflow experiment the run is logged in (created on first use)"
        )
        run_name: str | None = Field(None, description="the MLflow run's name; None: run.name")
        register: str | None = Field(
            None, description="registered model name: each finished run adds a version; None: no registry"
        )
        artifact_location: str | None = Field(
            None, description="where a NEW experiment keeps artifacts; None: MLflow's (./mlruns)"
        )
        tensorboard: bool | None = Field(
            None,
            description="event files in RUN/tensorboard for `tensorboard --logdir runs`; None: when tensorboard is "
            "installed (pip install 'modelcycle[tensorboard]'), true: required, false: off",
        )


class LMSection(Section):
    """Language-model runs (run.task=lm or sft, docs/lm.md): data files, context, model size,
    sample generations. ``model.name`` is ``llama`` (built from ``size``) or a model folder."""

    tokenizer: str | None = Field(
        None, description="a tokenizer folder (`modelcycle lm tokenizer`); None: the model folder's own"
    )
    size: Literal["tiny", "small", "base", "medium"] = Field(
        "tiny", description="with model.name=llama (lm/model.py PRESETS)"
    )
    context_length: int = Field(256, ge=8, description="tokens per training sequence")
    train_files: list[str] = Field(
        default_factory=list, description="lm: .txt (blank line between documents) or .jsonl"
    )
    val_files: list[str] = Field(default_factory=list, description="sft: chat (messages) or Alpaca JSONL")
    packing: bool = Field(False, description="sft: several conversations per sequence (pretraining always packs)")
    sample_every: int = Field(0, ge=0, description="optimizer steps between logged sample generations; 0 = off")
    sample_prompts: list[str] = Field(default_factory=list, description="sft: user messages; lm: text to continue")
    sample_tokens: int = Field(48, ge=1, description="new tokens per logged sample")
    eval_samples: int = Field(8, ge=0, description="held-out prompts answered in `modelcycle evaluate`")
    eval_tokens: int = Field(160, ge=1, description="new tokens per answer in `modelcycle evaluate`")
    end_of_turn: str | None = Field(
        None,
        description=(
            "the token that closes an assistant turn (trained after each answer, generation stops at it), e.g. "
            '"<|im_end|>"; None: the one the chat template writes'
        ),
    )
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description=(
            "the package's weights: auto keeps each tensor's dtype of the model the run started from (float32 for "
            "model.name=llama); or every floating tensor in one dtype"
        ),
    )
    tokenizer_mismatch_ok: bool = Field(
        False, description="accept an lm.tokenizer whose tokens or special ids are not the model's"
    )


class RewardSection(Section):
    """``modelcycle lm reward``: a scalar score learned from preference pairs (docs/lm-rlhf.md)."""

    margin_scale: float = Field(1.0, ge=0, description='times each pair\'s "margin" in the loss; 0 ignores the margins')


class DPOSection(Section):
    """``modelcycle lm dpo``: the policy learns from preference pairs directly (docs/lm-rlhf.md)."""

    loss: Literal["sigmoid", "hinge", "ipo", "simpo", "orpo"] = Field(
        "sigmoid", description="sigmoid (DPO), hinge, ipo, simpo or orpo"
    )
    beta: float = Field(
        0.1, gt=0, description="how far from the reference the policy may move; for orpo, the odds term's weight"
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="sigmoid/simpo: the share of pairs assumed mislabelled"
    )
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: the reward margin asked for")
    cache_reference: bool = Field(
        True, description="reference log-probabilities computed once before training, not every step"
    )
    reference: str | None = Field(None, description="a model folder or run; None: the model the run starts from")


class PPOSection(Section):
    """``modelcycle lm ppo``: the policy learns to please a reward model (docs/lm-rlhf.md)."""

    policy: str | None = Field(None, description="the run or model folder PPO starts from (also the frozen reference)")
    reward: str | None = Field(None, description="a reward run (`modelcycle lm reward`) or its package")
    iterations: int = Field(50, ge=1, description="rollout + update rounds")
    rollout_batch: int = Field(16, ge=1, description="prompts answered per iteration")
    minibatch: int = Field(8, ge=1, description="responses per optimizer step")
    update_epochs: int = Field(4, ge=1, description="passes over each rollout batch")
    max_new_tokens: int = Field(48, ge=1, description="new tokens per rollout response")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of rollouts")
    whiten_scores: bool = Field(False, description="reward-model scores to zero mean, unit std over each rollout batch")
    kl_coef: float = Field(0.05, ge=0, description="the start value of the per-token KL penalty's coefficient")
    kl_target: float | None = Field(
        6.0, gt=0, description="nats per response the adaptive coefficient aims at; None: fixed"
    )
    kl_horizon: int = Field(10000, ge=1, description="how slowly the adaptive coefficient moves")
    gamma: float = Field(1.0, ge=0, le=1, description="discount factor over a response's tokens")
    lam: float = Field(0.95, ge=0, le=1, description="GAE's lambda")
    clip: float = Field(0.2, gt=0, description="policy ratio clip")
    value_clip: float = Field(0.2, gt=0, description="value-function clip range")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    checkpoint_every: int = Field(10, ge=1, description="iterations between checkpoints")
