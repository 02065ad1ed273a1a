"""The training loop: learning, accumulation, clipping, EMA, precision, schedules, early stopping,
checkpoints and logs, trained on the stub task (stub_task.py: 30 rows of numbers, 4 steps an
epoch, nothing to decode). What is about images is in test_trainer_images.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import stub_task
import torch
from safetensors.torch import load_file

from helpers import read_jsonl
from modelcycle import api
from modelcycle.config import TrainSection
from modelcycle.engine.callbacks import Callback
from modelcycle.engine.optim import build_scheduler
from modelcycle.errors import ConfigError, NonFiniteLossError, UserError

STEPS_PER_EPOCH = 4  # 30 training rows in batches of 8


def _train(stub_config, *more: str, callbacks=None, **extra):
    return api.train(stub_config(*more, **extra), progress=False, callbacks=callbacks)


def _val_y(config) -> torch.Tensor:
    return stub_task.rows(config.data.root, "val")[1]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


class StepRecorder(Callback):
    """Records the global norm of each optimizer step's parameter change."""

    def __init__(self):
        self.deltas: list[float] = []
        self.lrs: list[float] = []
        self.before: list[torch.Tensor] = []

    def on_fit_start(self, trainer):
        self.before = _params(trainer.model)

    def on_step_end(self, trainer):
        now = _params(trainer.model)
        self.deltas.append(math.sqrt(sum(float((a - b).pow(2).sum()) for a, b in zip(now, self.before, strict=True))))
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])
        self.before = now


# ---------------------------------------------------------------- learning


def test_loss_decreases_and_the_model_learns(stub_config):
    config = stub_config(train__epochs=6, train__lr=0.03)
    run = api.train(config, progress=False)
    epochs = run.epoch_metrics()
    assert [m["epoch"] for m in epochs] == [1, 2, 3, 4, 5, 6]
    assert [m["step"] for m in epochs] == [STEPS_PER_EPOCH * e for e in range(1, 7)]
    assert epochs[-1]["train_loss"] < 0.6 * epochs[0]["train_loss"]
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]
    assert epochs[-1]["val_loss"] < 0.5 * float(_val_y(config).var())  # well below guessing the mean
    # the packaged model agrees with the metrics it carries
    manifest = json.loads((run.model_dir / "modelcycle.json").read_text())
    assert manifest["task"] == "stub_regression"
    assert api.evaluate(run)["mse"] == pytest.approx(manifest["metrics"]["val_loss"], rel=1e-5)


def test_metrics_jsonl_lines(stub_config):
    run = _train(stub_config, train__epochs=2, train__log_every=2)
    lines = read_jsonl(run.path / "metrics.jsonl")
    step_lines = [m for m in lines if "epoch_time_s" not in m]
    epoch_lines = [m for m in lines if "epoch_time_s" in m]
    assert [m["step"] for m in step_lines] == [2, 4, 6, 8]
    assert [m["epoch"] for m in step_lines] == [1, 1, 2, 2]
    assert [(m["step"], m["epoch"]) for m in epoch_lines] == [(4, 1), (8, 2)]
    for m in step_lines:
        assert {"step", "epoch", "lr", "train_loss", "samples_per_s"} <= set(m)
        assert m["train_loss"] > 0 and m["samples_per_s"] > 0
    for m in epoch_lines:
        assert {"lr", "train_loss", "val_loss", "epoch_time_s"} <= set(m)
        assert m["val_loss"] > 0 and m["epoch_time_s"] > 0
    steps = [m["step"] for m in lines]
    assert steps == sorted(steps)
    # the epoch's train loss is the mean over all its samples, i.e. over its two logging windows
    # (steps 1-2: 16 rows, steps 3-4: 8 + the last 6)
    for epoch in (1, 2):
        first, second = (m["train_loss"] for m in step_lines if m["epoch"] == epoch)
        assert epoch_lines[epoch - 1]["train_loss"] == pytest.approx((16 * first + 14 * second) / 30)
    assert run.metrics == lines


def test_gradient_accumulation_matches_a_big_batch(stub_config, tmp_path: Path):
    # 24 rows: whole batches of 8 and of 4. No dropout (stub_config's model), so each forward is a
    # pure function of the weights and the batch.
    common = {
        "data__root": stub_task.write_data(tmp_path / "rows24", train=24, val=16),
        "train__optimizer": "sgd",
        "train__schedule": "none",
        "train__lr": 0.05,
        "train__epochs": 2,
    }
    big = _train(stub_config, name="big", train__batch_size=8, **common)
    acc = _train(stub_config, name="acc", train__batch_size=4, train__accumulate=2, **common)
    small = _train(stub_config, name="small", train__batch_size=4, **common)
    assert [m["step"] for m in acc.epoch_metrics()] == [3, 6]  # 6 micro-batches = 3 steps an epoch
    assert [m["step"] for m in small.epoch_metrics()] == [6, 12]
    w_big = _load(big.checkpoints / "last.pt")["model"]
    w_acc = _load(acc.checkpoints / "last.pt")["model"]
    w_small = _load(small.checkpoints / "last.pt")["model"]
    for key in w_big:
        torch.testing.assert_close(w_acc[key], w_big[key], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(w_small["3.weight"], w_big["3.weight"], atol=1e-4)


def test_gradient_clipping_bounds_every_step(stub_config):
    clip, lr = 1e-3, 1.0
    opts = {
        "train__optimizer": "sgd",
        "train__momentum": 0.0,
        "train__schedule": "none",
        "train__lr": lr,
        "train__epochs": 1,
    }
    clipped, free = StepRecorder(), StepRecorder()
    _train(stub_config, name="clipped", train__clip_grad=clip, callbacks=[clipped], **opts)
    _train(stub_config, name="free", callbacks=[free], **opts)
    assert len(clipped.deltas) == len(free.deltas) == STEPS_PER_EPOCH
    # plain SGD: the step is lr * gradient, so its norm is at most lr * clip
    assert all(0 < d <= lr * clip * 1.001 for d in clipped.deltas), clipped.deltas
    assert max(free.deltas) > 10 * lr * clip


def test_ema_weights_are_checkpointed_and_packaged(stub_config):
    run = _train(stub_config, train__ema="true", train__ema_decay=0.9, train__epochs=2)
    last = _load(run.checkpoints / "last.pt")
    assert last["ema"]["updates"] == 2 * STEPS_PER_EPOCH
    ema, raw = last["ema"]["model"], last["model"]
    assert ema.keys() == raw.keys()
    assert any(not torch.equal(ema[k], raw[k]) for k in raw if raw[k].is_floating_point())
    manifest = json.loads((run.model_dir / "modelcycle.json").read_text())
    source = _load(run.checkpoints / manifest["checkpoint"])
    packaged = load_file(run.model_dir / "model.safetensors")
    for key, value in source["ema"]["model"].items():
        assert torch.equal(packaged[key], value), key  # the package holds the averaged weights


def test_bf16_precision_runs_on_cpu(stub_config):
    run = _train(stub_config, train__precision="bf16", train__epochs=1)
    metrics = run.epoch_metrics()[-1]
    assert all(math.isfinite(metrics[k]) for k in ("train_loss", "val_loss"))
    weights = _load(run.checkpoints / "last.pt")["model"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in weights.values())


def test_fp16_on_cpu_is_refused(stub_config):
    with pytest.raises(ConfigError, match="bf16"):
        _train(stub_config, train__precision="fp16", train__epochs=1)


def test_channels_last_relayout_happens_on_the_target_device():
    """A batch goes to the device first and into channels_last there: on a GPU that takes
    microseconds, on the host it held the loop up. The meta device stands in for a GPU."""
    from torch.overrides import TorchFunctionMode

    from modelcycle.engine.trainer import to_device

    where: list[str] = []

    class Relayouts(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.Tensor.contiguous and kwargs.get("memory_format") is torch.channels_last:
                where.append(args[0].device.type)
            return func(*args, **kwargs)

    with Relayouts():
        images, labels = to_device((torch.rand(2, 3, 8, 8), torch.tensor([0, 1])), torch.device("meta"), True)
    assert where == ["meta"]
    assert images.device.type == "meta" and images.is_contiguous(memory_format=torch.channels_last)
    assert labels.device.type == "meta"


def test_unknown_monitor_is_refused(stub_config):
    with pytest.raises(ConfigError) as info:
        _train(stub_config, train__monitor="val_los")
    assert "'val_los'" in str(info.value) and "train_loss, val_loss" in str(info.value)


# ---------------------------------------------------------------- schedules


def _lrs(steps_per_epoch: int = 10, **train) -> list[float]:
    cfg = TrainSection(lr=1.0, **train)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_cosine_schedule():
    lrs = _lrs(epochs=4, schedule="cosine")
    total = 40
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[20] == pytest.approx(0.5)
    for step in (5, 13, 31):
        assert lrs[step] == pytest.approx(0.5 * (1 + math.cos(math.pi * step / total)))
    assert all(a >= b for a, b in zip(lrs[:-1], lrs[1:], strict=True))


def test_warmup_then_cosine():
    lrs = _lrs(epochs=4, schedule="cosine", warmup_epochs=1)
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[25] == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert lrs[-1] < 0.01


def test_step_schedule():
    lrs = _lrs(epochs=6, schedule="step", step_size=2, gamma=0.1)
    for step, lr in enumerate(lrs):
        assert lr == pytest.approx(0.1 ** ((step // 10) // 2)), step


def test_onecycle_schedule():
    lrs = _lrs(epochs=10, schedule="onecycle")
    peak = int(0.3 * 100)
    assert lrs[0] == pytest.approx(1 / 25)
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == peak
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(lrs[peak:-1], lrs[peak + 1 :], strict=True))
    assert lrs[-1] < 0.001


def test_constant_schedule():
    assert set(_lrs(epochs=2, schedule="none")) == {1.0}


def test_logged_lr_follows_the_step_schedule(stub_config):
    run = _train(
        stub_config, train__schedule="step", train__step_size=1, train__gamma=0.5, train__epochs=3, train__lr=0.01
    )
    # the logged lr is the one the next step will use
    assert [m["lr"] for m in run.epoch_metrics()] == pytest.approx([0.005, 0.0025, 0.00125])
    recorder = StepRecorder()
    _train(
        stub_config,
        name="cos",
        train__schedule="cosine",
        train__warmup_epochs=1,
        train__epochs=2,
        train__lr=0.01,
        callbacks=[recorder],
    )
    assert recorder.lrs[:4] == pytest.approx([0.005, 0.0075, 0.01, 0.01])  # after steps 1..4 of 4 warm-up


# ---------------------------------------------------------------- early stopping and checkpoints


def test_early_stopping_stops_and_records_it(stub_config):
    # a learning rate of 1e-20 moves no weight by even one float32 step, so val_loss never
    # improves: patience 2 ends the run after epoch 3
    run = _train(
        stub_config,
        train__lr=1e-20,
        train__optimizer="sgd",
        train__epochs=8,
        train__early_stop_patience=2,
    )
    assert [m["epoch"] for m in run.epoch_metrics()] == [1, 2, 3]
    events = (run.path / "events.log").read_text()
    assert "early stop after epoch 3" in events and "val_loss did not improve" in events
    state = _load(run.checkpoints / "last.pt")["state"]
    assert state["stopped_early"] is True and state["epoch"] == 3 and state["best_epoch"] == 1
    assert _load(run.checkpoints / "best.pt")["state"]["epoch"] == 1


def test_checkpoint_files_and_pruning(stub_config):
    run = _train(stub_config, train__epochs=2, train__checkpoint_every=1, train__keep_checkpoints=2)
    files = sorted(p.name for p in run.checkpoints.iterdir())
    assert files == ["best.pt", "last.pt", "step-000000007.pt", "step-000000008.pt"]
    last = _load(run.checkpoints / "last.pt")
    assert last["state"]["step"] == 8 and last["state"]["epoch"] == 2
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "state", "meta"} <= set(last)
    assert last["meta"]["task"] == "stub_regression"  # the task's own record travels with every checkpoint
    best = _load(run.checkpoints / "best.pt")
    assert best["state"]["epoch"] == best["state"]["best_epoch"] == last["state"]["best_epoch"]
    step7 = _load(run.checkpoints / "step-000000007.pt")
    assert step7["state"]["step"] == 7 and step7["state"]["batch_in_epoch"] == 3
    events = (run.path / "events.log").read_text()
    assert events.count("checkpoint step=") == 8 + 2  # every step, and again at each epoch end
    assert not list(run.checkpoints.glob("*.tmp-*"))


def test_keep_one_step_checkpoint_by_default(stub_config):
    run = _train(stub_config, train__epochs=2)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["best.pt", "last.pt", "step-000000008.pt"]


def test_best_checkpoint_tracks_the_monitor(stub_config):
    # a high learning rate, so that the losses go up and down
    run = _train(stub_config, train__epochs=4, train__lr=0.1, train__monitor="train_loss")
    epochs = run.epoch_metrics()
    best_epoch = min(epochs, key=lambda m: m["train_loss"])["epoch"]
    others = {epochs[-1]["epoch"], min(epochs, key=lambda m: m["val_loss"])["epoch"]}
    assert best_epoch not in others, "the last epoch and val_loss's best must differ from it, or the test means little"
    assert _load(run.checkpoints / "best.pt")["state"]["epoch"] == best_epoch
    assert json.loads((run.model_dir / "modelcycle.json").read_text())["metrics"]["epoch"] == best_epoch


def test_training_into_an_existing_run_needs_resume_or_overwrite(stub_config):
    config = stub_config(train__epochs=1)
    run = api.train(config, progress=False)
    with pytest.raises(UserError) as info:
        api.train(config, progress=False)
    message = str(info.value)
    assert str(run.path) in message and "--resume" in message and "--overwrite" in message
    again = api.train(config, progress=False, overwrite=True)
    assert [m["epoch"] for m in again.epoch_metrics()] == [1]  # a fresh run, not appended


# ---------------------------------------------------------------- non-finite loss


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(stub_config, tmp_path: Path):
    with pytest.raises(NonFiniteLossError) as info:  # the model returns NaN from its 6th training step on
        _train(stub_config, model__args="{nan_after: 5}", train__epochs=3)
    message = str(info.value)
    assert "step 6" in message and "epoch 2" in message and "train.lr" in message
    run_dir = tmp_path / "runs" / "tiny"
    assert str(run_dir / "checkpoints" / "last.pt") in message
    last = _load(run_dir / "checkpoints" / "last.pt")
    assert last["state"]["step"] == STEPS_PER_EPOCH
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    assert "non-finite loss at step 6" in (run_dir / "events.log").read_text()
    assert not (run_dir / "model").exists()


def test_non_finite_loss_in_the_first_epoch(stub_config):
    with pytest.raises(NonFiniteLossError) as info:
        _train(stub_config, train__lr=1e30, train__epochs=2, train__optimizer="sgd")
    assert "no checkpoint had been written yet" in str(info.value)


def test_callbacks_see_every_step_and_epoch(stub_config):
    class Counter(Callback):
        def __init__(self):
            self.steps = self.epochs = 0

        def on_step_end(self, trainer):
            self.steps += 1

        def on_epoch_end(self, trainer, metrics):
            self.epochs += 1

    counter = Counter()
    _train(stub_config, train__epochs=2, callbacks=[counter])
    assert (counter.steps, counter.epochs) == (8, 2)


@pytest.mark.parametrize("resume", [False, True], ids=["start-again", "resume"])
def test_a_failed_attempt_leaves_no_stale_metrics(stub_config, resume: bool):
    # the first attempt dies at step 3, before any checkpoint, after logging steps 1 and 2;
    # the error says "--resume or start again": either way the new run's log must be its own
    with pytest.raises(NonFiniteLossError, match="no checkpoint had been written yet"):
        _train(stub_config, model__args="{nan_after: 2}", train__log_every=1)
    config = stub_config(train__log_every=1)
    run = api.train(config, progress=False, resume=resume)
    steps = [m["step"] for m in run.metrics if "epoch_time_s" not in m]
    assert steps == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert [m["epoch"] for m in run.epoch_metrics()] == [1, 2]
