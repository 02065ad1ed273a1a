"""The training loop. It knows nothing about images or text: a task computes each step.

What makes resume exact: checkpoints are taken only at optimizer-step boundaries and hold the
model, optimizer, schedule, scaler, EMA, every RNG stream, the sampler position and the
counters; the loader draws from its own generator, never the global one; augmentation seeds come
from the sampler. An interrupted CPU run therefore ends with the same bits as an uninterrupted one.

The same loop runs on several processes (torchrun); ``engine/distributed.py`` (reductions, votes,
why results match one process) and ``engine/strategy.py`` (DDP, FSDP) hold what differs there.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from modelcycle.config import TrainSection
from modelcycle.engine import checkpoint, distributed, strategy
from modelcycle.engine.callbacks import Callback, ProgressDisplay
from modelcycle.engine.ema import EMA
from modelcycle.engine.optim import build_optimizer, build_scheduler, check_groups
from modelcycle.engine.run_context import RunContext, TrainingInterrupted
from modelcycle.engine.task import Sums, Task, add_sums
from modelcycle.errors import ConfigError

__all__ = ["TrainState", "Trainer", "TrainingInterrupted", "to_device"]  # TrainingInterrupted: engine/run_context.py


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    batch_in_epoch: int = 0  # batches of the current epoch consumed by completed steps
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    epoch_sums: dict[str, float] = field(default_factory=dict)
    # the end-of-epoch metrics.jsonl lines so far: a checkpoint carries its own epochs' figures,
    # so a resume can put back what a truncated metrics.jsonl lost (the package records them)
    history: list[dict] = field(default_factory=list)


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        if batch.device != device:
            batch = batch.to(device, non_blocking=True)
        # after the copy: on a GPU the relayout takes microseconds; on the host it held up the
        # training loop (0.1 s a step for 128 x 3 x 224 x 224 on one busy core here) while the GPU waited
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(b, device, channels_last) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    return batch


class Trainer:
    """The epoch loop on a :class:`RunContext` (run folder, logs, signals, checkpoint files, the
    non-finite guard): epochs, steps, accumulation, precision, EMA, validation, early stopping."""

    def __init__(
        self,
        ctx: RunContext | None,
        task: Task,
        model: nn.Module,
        train_loader: DataLoader,
        val_loader: DataLoader | None,
        cfg: TrainSection,
        callbacks: list[Callback] | None = None,
        meta: dict | None = None,
        progress: bool = True,
    ):
        self.ctx = ctx = ctx or RunContext(None)
        self.task, self.cfg, self.run_dir, self.meta = task, cfg, ctx.run_dir, meta or {}
        self.train_loader, self.val_loader = train_loader, val_loader
        self.device = distributed.resolve_device(cfg.device)
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.precision=fp16 needs a CUDA device; on CPU use train.precision=bf16")
        self.model = model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema else None
        # with several processes: DDP around the model, or FSDP shards it in place (so before the optimizer)
        self.strategy = strategy.build(cfg, self.device)
        wrapped = self.strategy.wrap(self.model)
        # validation needs no gradient sync, so it runs the model without DDP's wrapper
        self.step_model, self.eval_model = (torch.compile(m) if cfg.compile else m for m in (wrapped, self.model))
        steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.accumulate)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        self.state = TrainState()
        self.callbacks = ([ProgressDisplay()] if progress else []) + list(callbacks or []) + ctx.callbacks
        self.ckpt_dir, self.metrics_log, self.event = ctx.ckpt_dir, ctx.metrics_log, ctx.event
        self.monitor_mode = cfg.monitor_direction
        self._check_monitor()

    # ------------------------------------------------------------------ sizes and helpers

    @property
    def batches_per_epoch(self) -> int:
        loader = self.train_loader
        if hasattr(loader.sampler, "batches_per_epoch"):  # global batches, the same on every rank
            return loader.sampler.batches_per_epoch
        size = len(loader.dataset)
        return size // loader.batch_size if loader.drop_last else math.ceil(size / loader.batch_size)

    def _autocast(self):
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _check_monitor(self) -> None:
        names = getattr(self.task, "metric_names", None)
        if names is None:
            return
        splits = ("train", "val") if self.val_loader is not None else ("train",)
        valid = [f"{split}_{name}" for split in splits for name in names[split]]
        if self.cfg.monitor not in valid:
            raise ConfigError(
                f"train.monitor: '{self.cfg.monitor}' is not a metric of this run; choose one of {', '.join(valid)}"
            )

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict:
        """Full, unwrapped state (FSDP shards gathered on rank 0): one layout for any process count."""
        return {
            "format": 1,
            "model": self.strategy.model_state(self.model),
            "optimizer": self.strategy.optimizer_state(self.model, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            **distributed.rng_states(),
            "world_size": distributed.world_size(),
            "state": asdict(self.state),
            "meta": self.meta,
        }

    def save(self, best: bool = False) -> None:
        if self.ckpt_dir is None:
            return
        self._check_finite()
        state = self.checkpoint_state()  # every rank takes part (gathers), rank 0 writes
        self.ctx.save(state, self.state.step, f"step={self.state.step} epoch={self.state.epoch}", best)

    def restore(self) -> bool:
        """Load ``last.pt`` if there is one; False means there was nothing to resume."""
        ck = self.ctx.load_last(self.strategy.map_location)
        if ck is None:
            return False
        check_groups(self.optimizer, ck["optimizer"], self.ctx.last)
        self.strategy.load(self.model, self.optimizer, ck)
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        if self.ema and ck.get("ema"):
            self.ema.load_state_dict(ck["ema"])
        self.state = state = TrainState(**ck["state"])
        if distributed.is_main() and state.epoch and state.best_epoch == state.epoch and not state.batch_in_epoch:
            # last.pt is the end-of-epoch save of the best epoch; a crash between writing it and
            # linking best.pt would otherwise leave best.pt an epoch behind the recorded best
            checkpoint.atomic_link(self.ctx.last, self.ckpt_dir / "best.pt")
        where = f"step={state.step} epoch={state.epoch}"
        self.ctx.resumed(ck, self.cfg.seed, where, history=state.history, epochs=state.epoch)
        return True

    def _check_finite(self) -> None:
        self.ctx.check_finite(f"epoch {self.state.epoch + 1}")

    def _stop_now(self) -> None:
        self.save()
        raise self.ctx.interrupted(f"step {self.state.step}")

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: bool = False) -> TrainState:
        if not (resume and self.restore()):
            self.ctx.fresh_start(resume)
        with self.ctx.fitting(self, f"step={self.state.step} epoch={self.state.epoch}{distributed.describe(self.cfg)}"):
            while self.state.epoch < self.cfg.epochs and not self.state.stopped_early:
                self._run_epoch()
        self.event(f"fit end step={self.state.step} epoch={self.state.epoch}")
        return self.state

    def _epoch_batches(self):
        sampler = self.train_loader.sampler
        # in samples of the global order: the same position whatever the process count
        start = self.state.batch_in_epoch * getattr(sampler, "global_batch", self.train_loader.batch_size)
        if hasattr(sampler, "set_epoch"):
            try:
                sampler.set_epoch(self.state.epoch, start=start)
                return iter(self.train_loader)
            except TypeError:  # a sampler that cannot start mid-epoch: skip batches instead
                sampler.set_epoch(self.state.epoch)
        return itertools.islice(iter(self.train_loader), self.state.batch_in_epoch, None)

    def _run_epoch(self) -> None:
        cfg, model, state = self.cfg, self.model, self.state
        for cb in self.callbacks:
            cb.on_epoch_start(self)
        model.train()
        window: Sums = {}
        window_start = time.perf_counter()
        epoch_start = window_start
        total = self.batches_per_epoch
        accumulate = cfg.accumulate
        micro = 0
        share = getattr(self.train_loader.sampler, "loss_weight", None)
        for index, batch in enumerate(self._epoch_batches(), start=state.batch_in_epoch):
            for cb in self.callbacks:
                cb.on_train_batch(self, batch)
            batch = to_device(batch, self.device, cfg.channels_last)
            micro += 1
            ends_step = micro % accumulate == 0 or index + 1 >= total
            weight = share(index) if share else 1.0  # != 1: this rank's part of a short last batch
            with self.strategy.grad_sync(ends_step):
                with self._autocast():
                    loss, sums = self.task.training_step(self.step_model, batch)
                    if cfg.l1:
                        loss = loss + cfg.l1 * sum(p.abs().sum() for p in model.parameters() if p.dim() > 1)
                    if weight != 1.0:
                        loss = loss * weight
                self.scaler.scale(loss / accumulate if accumulate > 1 else loss).backward()
            add_sums(window, sums, counted=weight > 0)
            self.ctx.note_loss(loss, state.step + 1)
            if not ends_step:
                continue
            self._optimizer_step()
            state.step += 1
            state.batch_in_epoch = index + 1
            for cb in self.callbacks:
                cb.on_step_end(self)
            if state.step % cfg.log_every == 0:
                window_start = self._log_window(window, window_start)
                window = {}
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                window_start = self._log_window(window, window_start, write=False)
                window = {}
                self.save()
            if self.ctx.stop_requested():
                self._log_window(window, window_start, write=False)
                self._stop_now()
        self._log_window(window, window_start, write=False)
        self._end_epoch(time.perf_counter() - epoch_start)

    def _optimizer_step(self) -> None:
        cfg = self.cfg
        if cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema:
            self.ema.update(self.model)

    def _log_window(self, window: Sums, started: float, write: bool = True) -> float:
        """Move the window's sums to the host (the only sync) and, if asked, log them."""
        if not window:
            return started
        floats = distributed.reduce_sums(window)  # global sums, the same on every rank
        for key, value in floats.items():
            self.state.epoch_sums[key] = self.state.epoch_sums.get(key, 0.0) + value
        if write:
            self._check_finite()
            now = time.perf_counter()
            metrics = {
                "step": self.state.step,
                "epoch": self.state.epoch + 1,
                "lr": self.optimizer.param_groups[0]["lr"],
                **{f"train_{k}": v for k, v in self.task.summarize(floats).items()},
            }
            if "count" in floats:
                metrics["samples_per_s"] = floats["count"] / max(now - started, 1e-9)
            if self.metrics_log:
                self.metrics_log.write(metrics)
            for cb in self.callbacks:
                cb.on_log(self, metrics)
            return now
        return started

    def validate(self) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        model = self.ema.model if self.ema else self.eval_model
        was_training = model.training
        model.eval()
        sums: Sums = {}
        counted = getattr(self.val_loader.batch_sampler, "counted", None)  # then stand-ins (ShardedBatches)
        for cb in self.callbacks:
            cb.on_validation_start(self, model)
        with torch.no_grad(), self._autocast():
            for i, batch in enumerate(self.val_loader):
                out = self.task.validation_step(model, to_device(batch, self.device, self.cfg.channels_last))
                add_sums(sums, out, counted=counted is None or i < counted)
        for cb in self.callbacks:
            cb.on_validation_end(self)
        model.train(was_training)
        return {f"val_{k}": v for k, v in self.task.summarize(distributed.reduce_sums(sums)).items()}

    def _end_epoch(self, seconds: float) -> None:
        state = self.state
        self._check_finite()
        train = {f"train_{k}": v for k, v in self.task.summarize(state.epoch_sums).items()} if state.epoch_sums else {}
        metrics = {
            "step": state.step,
            "epoch": state.epoch + 1,
            "lr": self.optimizer.param_groups[0]["lr"],
            **train,
            **self.validate(),
            "epoch_time_s": seconds,
        }
        value = metrics.get(self.cfg.monitor)
        improved = value is not None and (
            state.best is None or (value > state.best if self.monitor_mode == "max" else value < state.best)
        )
        if improved:
            state.best, state.best_epoch, state.bad_epochs = value, state.epoch + 1, 0
        else:
            state.bad_epochs += 1
        patience = self.cfg.early_stop_patience
        if patience and state.bad_epochs >= patience:
            state.stopped_early = True
            self.event(
                f"early stop after epoch {state.epoch + 1}: {self.cfg.monitor} did not improve for {patience} epochs"
            )
        state.epoch += 1
        state.batch_in_epoch = 0
        state.epoch_sums = {}
        state.history.append(dict(metrics))  # a copy: callbacks below see (and may add to) metrics
        if self.metrics_log:
            self.metrics_log.write(metrics)
        self.save(best=improved)
        for cb in self.callbacks:
            cb.on_epoch_end(self, metrics)
