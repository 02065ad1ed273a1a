"""Optimizers and learning-rate schedules from the ``train`` config section."""

from __future__ import annotations

import math

import torch
from torch import nn

from modelcycle.config import TrainSection
from modelcycle.errors import CheckpointError, ConfigError


def param_groups(model: nn.Module, cfg: TrainSection) -> list[dict]:
    """Every parameter, frozen ones included, so that ``train.unfreeze_at_epoch`` needs no new
    optimizer (which would break exact resume): torch optimizers skip a parameter whose ``grad``
    is None, so a frozen one gets no update, no weight decay and no state. With
    ``train.head_lr_mult`` the head gets its own group at lr x mult; group 0 (the body) stays the
    one whose lr is logged, and the schedule scales each group's own base lr.

    Weight decay skips 1-D parameters (biases and the scales and shifts of BatchNorm, LayerNorm,
    GroupNorm, RMSNorm), as timm and the Hugging Face Trainer do: decaying them only pulls a
    norm layer's scale towards zero, which no regulariser means to do. Those go to a group of
    their own with ``weight_decay=0``; ``train.decay_norm_and_bias=true`` decays everything, as
    modelcycle 0.1.0 did (and as its checkpoints are laid out)."""
    params = list(model.parameters())
    head = _head_ids(model, cfg) if cfg.head_lr_mult != 1.0 else set()
    split_decay = cfg.weight_decay > 0 and not cfg.decay_norm_and_bias
    groups = []
    for in_head in (False, True) if head else (False,):
        part = [p for p in params if (id(p) in head) == in_head]
        extra = {"lr": cfg.lr * cfg.head_lr_mult} if in_head else {}
        if not split_decay:
            groups.append({"params": part, **extra})
            continue
        groups.append({"params": [p for p in part if p.ndim > 1], **extra})
        if no_decay := [p for p in part if p.ndim <= 1]:
            groups.append({"params": no_decay, "weight_decay": 0.0, **extra})
    return groups


def _head_ids(model: nn.Module, cfg: TrainSection) -> set[int]:
    from modelcycle.models.freeze import HEAD_NAMES, head_name

    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    try:
        return {id(p) for p in model.get_submodule(head_name(model)).parameters()}
    except ConfigError:
        raise ConfigError(
            f"train.head_lr_mult={cfg.head_lr_mult:g}, but the model has no classification head (no module named "
            f"{' / '.join(HEAD_NAMES)}); name your final layer `head`, or set train.head_lr_mult=1"
        ) from None


def build_optimizer(model: nn.Module, cfg: TrainSection) -> torch.optim.Optimizer:
    params = param_groups(model, cfg)
    # the fused kernels: 4-9x faster steps than the for-loop on CPU (benchmarks/bench_whole_process.py),
    # the same numbers up to float rounding
    fast = {"fused": True} if _fusable(model) else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
            **fast,
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)


def _fusable(model: nn.Module) -> bool:
    """Plain floating-point tensors on a CPU or CUDA device (FSDP's sharded DTensors: torch's default)."""
    return all(
        type(p.data) is torch.Tensor and p.is_floating_point() and p.device.type in ("cpu", "cuda")
        for p in model.parameters()
    )


def check_groups(optimizer: torch.optim.Optimizer, saved: dict, where: object) -> None:
    """Refuse a checkpoint whose optimizer groups differ from this run's: torch would say only that
    sizes differ; this says why (a checkpoint of a version that decayed every parameter, or a
    changed setting) and what to do."""
    ours = [len(g["params"]) for g in optimizer.param_groups]
    theirs = [len(g["params"]) for g in saved.get("param_groups", [])]
    if ours == theirs:
        return
    raise CheckpointError(
        f"{where}: its optimizer has parameter groups of {theirs} parameters, this run's has {ours}. "
        "Checkpoints of modelcycle 0.1.0 (which decayed biases and norm layers too) have one group per "
        "learning rate: resume them with train.decay_norm_and_bias=true; otherwise resume with the settings "
        "the run was started with (train.weight_decay, train.head_lr_mult), or start again with --overwrite"
    )


def lr_factor(cfg: TrainSection, steps_per_epoch: int, total_steps: int | None = None):
    """A function of the optimizer step giving the LR multiplier.

    Everything is expressed as one LambdaLR so that the schedule's whole state is a step
    counter, which makes resume exact. A loop whose length is not ``train.epochs`` (PPO's
    iterations) gives ``total_steps``; its "epoch" (warmup_epochs, step_size) is then its unit
    of ``steps_per_epoch`` steps.
    """
    total = max(1, total_steps if total_steps is not None else cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if cfg.schedule == "onecycle":
            # LR goes 1/25 -> 1 over the first 30 %, then cosine down to 1/1e4 (Smith & Topin)
            peak = max(1, int(0.3 * total))
            if step < peak:
                return 1 / 25 + (1 - 1 / 25) * (1 - math.cos(math.pi * step / peak)) / 2
            progress = min(1.0, (step - peak) / max(1, total - peak))
            return 1e-4 + (1 - 1e-4) * (1 + math.cos(math.pi * progress)) / 2
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.schedule == "step":
            return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
        return 1.0

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainSection, steps_per_epoch: int, total_steps: int | None = None
):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch, total_steps))
