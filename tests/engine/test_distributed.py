"""Training on several processes: the sharded sampler, the settings checks, and real 2-process
runs (gloo on CPU, launched through `--nproc` / ``nproc=``) that must end at the weights of a
1-process run with the same global batch, write each file once, report global metrics, and
resume on a different number of processes.

Process start-up (importing torch and friends in every process) is most of the cost, so the
multi-process tests are few and each checks several things."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import InterruptAt, assert_user_error, cli_env, read_jsonl, run_cli, tiny_overrides
from modelcycle import api
from modelcycle.config import load_config
from modelcycle.data.datasets import EpochSampler, ShardedBatches
from modelcycle.engine import distributed, strategy
from modelcycle.errors import ConfigError, UserError
from modelcycle.packages import load_model

STEPS_PER_EPOCH = 4  # 27 training images in global batches of 8: 8, 8, 8, 3 (the 3 split 1 + 2)
EPOCHS = 8
# or in micro-batches of 4, 2 per step: 4, 4 | 4, 4 | 4, 4 | 3 (split 1 + 2), still 4 steps an epoch
ACCUMULATE = {"train__batch_size": 4, "train__accumulate": 2}

# A user model without BatchNorm (GroupNorm normalises per sample, so sharding the batch changes
# nothing) and without dropout: the 2-process step must equal the 1-process step. The Gate lets a
# test hold a run at a known training step: with MODELCYCLE_TEST_GATE=path:n, the n-th training
# forward waits until `path` exists.
MODEL = """
import os
import time

import torch
from torch import nn


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        spec = os.environ.get("MODELCYCLE_TEST_GATE")
        if spec and self.training:
            self.calls += 1
            path, n = spec.rsplit(":", 1)
            while self.calls == int(n) and not os.path.exists(path):
                time.sleep(0.02)
        return x


def build(in_channels, num_classes, image_size):
    torch.manual_seed(0)
    return nn.Sequential(
        Gate(),
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, num_classes),
    )
"""


# ---------------------------------------------------------------- the sampler, without processes


def _global_batches(size: int, batch: int, world: int, epoch: int = 1, start: int = 0) -> list[list[tuple]]:
    """Per global batch, each rank's local batch ((index, seed) pairs, cut from its sampler's
    stream as the DataLoader cuts it: batch // world at a time) with its loss weight."""
    samplers = [EpochSampler(size, 5, global_batch=batch, rank=r, world=world) for r in range(world)]
    for s in samplers:
        s.set_epoch(epoch, start=start)
    local = batch // world
    streams = [list(s) for s in samplers]
    first = start // batch
    count = samplers[0].batches_per_epoch - first
    assert all(
        len(stream) == len(s) and -(-len(stream) // local) == count for stream, s in zip(streams, samplers, strict=True)
    )
    return [
        [(streams[r][b * local : (b + 1) * local], samplers[r].loss_weight(first + b)) for r in range(world)]
        for b in range(count)
    ]


@pytest.mark.parametrize(
    ("size", "batch", "world"), [(27, 8, 2), (26, 8, 2), (25, 8, 2), (30, 6, 3), (20, 6, 3), (7, 4, 4)]
)
def test_sharded_epochs_are_the_single_process_epoch(size: int, batch: int, world: int):
    single = EpochSampler(size, 5, global_batch=batch)
    single.set_epoch(1)
    order = list(single)
    batches = _global_batches(size, batch, world)
    assert len(batches) == single.batches_per_epoch == -(-len(order) // batch)
    values = torch.randn(size, dtype=torch.float64)
    for b, shards in enumerate(batches):
        expected = order[b * batch : (b + 1) * batch]
        real = [pair for items, weight in shards if weight > 0 for pair in items]
        assert real == expected  # same images, same augmentation seeds, same order
        # DDP averages the ranks' weighted means: that is the mean over the global batch
        mean = sum(w * values[[i for i, _ in items]].mean() for items, w in shards) / world
        torch.testing.assert_close(mean, values[[i for i, _ in expected]].mean())
    if size % batch == 1:  # the lone last sample is left out, as with one process
        assert len(order) == size - 1


def test_short_last_batch_gives_idle_ranks_a_stand_in_of_weight_zero():
    shards = _global_batches(20, 6, 3)[-1]  # the last global batch holds 2 images for 3 ranks
    assert [len(items) for items, _ in shards] == [1, 1, 1]
    assert [w for _, w in shards] == [0.0, 1.5, 1.5]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_resume_position_counts_global_samples(world: int):
    """A run stopped after 2 global batches on one process resumes on `world` processes at the
    same images; and the other way round."""
    whole = _global_batches(40, 8, 1)
    tail = _global_batches(40, 8, world, start=16)
    assert len(tail) == len(whole) - 2
    for mine, theirs in zip(tail, whole[2:], strict=True):
        assert [p for items, w in mine if w > 0 for p in items] == theirs[0][0]


def test_sampler_refuses_a_start_inside_a_global_batch():
    with pytest.raises(ValueError, match="global batch"):
        EpochSampler(40, 0, global_batch=8, rank=1, world=2).set_epoch(0, start=12)


@pytest.mark.parametrize(("size", "batch", "world"), [(6, 4, 2), (6, 64, 2), (10, 3, 4), (1, 8, 3)])
def test_validation_shards_count_every_image_once(size: int, batch: int, world: int):
    shards = [ShardedBatches(size, batch, r, world) for r in range(world)]
    counted = sorted(i for s in shards for b in s.batches[: s.counted] for i in b)
    assert counted == list(range(size))
    assert len({len(s) for s in shards}) == 1  # the same number of forward passes on every rank
    assert all(len(b) <= batch for s in shards for b in s)


# ---------------------------------------------------------------- settings


def test_the_global_batch_must_split_evenly():
    assert distributed.split_batch(64, 4) == 16
    with pytest.raises(ConfigError, match=r"train.batch_size=10 .* train.batch_size=12"):
        distributed.split_batch(10, 4)
    with pytest.raises(UserError, match="--nproc 0"):
        distributed.split_batch(8, 0)


def test_settings_that_cannot_work_on_several_processes():
    cfg = load_config(None, ["train.device=cpu", "train.batch_size=8"]).train
    distributed.check_settings(cfg.model_copy(update={"sync_bn": True}), 1)  # one process: nothing to sync
    with pytest.raises(ConfigError, match="sync_bn=true needs CUDA"):
        distributed.check_settings(cfg.model_copy(update={"sync_bn": True}), 2)
    with pytest.raises(ConfigError, match="train.ema is not supported with train.strategy=fsdp"):
        distributed.check_settings(cfg.model_copy(update={"strategy": "fsdp", "ema": True}), 2)
    with pytest.raises(ConfigError, match="unfreeze_at_epoch does not work on several processes"):
        distributed.check_settings(cfg.model_copy(update={"unfreeze_at_epoch": 2}), 2)


def test_fsdp_optimizer_state_converts_to_the_single_process_layout():
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.5}])
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    by_name = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    assert set(by_name["state"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    converted = strategy._by_index(by_name)
    plain = opt.state_dict()
    assert converted["param_groups"] == plain["param_groups"]
    assert converted["state"].keys() == plain["state"].keys()
    for i, state in plain["state"].items():
        for key, value in state.items():
            assert torch.equal(converted["state"][i][key], value)
    back = strategy._by_name(converted, model, opt)
    assert back["param_groups"] == by_name["param_groups"] and back["state"].keys() == by_name["state"].keys()


def test_bad_process_counts_are_refused_before_anything_starts(tmp_path: Path):
    config = load_config(None, ["train.batch_size=8", f"run.dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"train.batch_size=8 is the global batch.*3 processes"):
        api.train(config, nproc=3)
    with pytest.raises(UserError, match="--nproc 0"):
        api.train(config, nproc=0)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- real runs on 2 processes
# ``setup`` (tests/engine/conftest.py): data (27 training, 6 validation images) and MODEL as a file.


def _reference(s: dict, name: str, **extra) -> Path:
    """The uninterrupted 1-process run with these settings, trained in this process once."""
    if name not in s:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each of the 2 processes; also much faster on a busy machine
        try:
            s[name] = api.train(load_config(None, _overrides(s, name, **extra)), progress=False).path
        finally:
            torch.set_num_threads(threads)
    return s[name]


def _overrides(s: dict, name: str, **extra) -> list[str]:
    # random crops stay on: their seeds must come from the global position
    values = {
        "model__name": s["model"],
        "model__args": "{}",
        "data__crop_scale": "[0.7,1.0]",
        "train__epochs": EPOCHS,
        "train__log_every": 5,
        "eval__batch_size": 4,
        **extra,
    }
    return tiny_overrides(s["root"] / "data", s["root"] / "runs", name, **values)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")["model"]


def _assert_same_weights(run: Path, reference: Path) -> None:
    ours, theirs = _weights(run), _weights(reference)
    assert list(ours) == list(theirs)  # unwrapped names: no "module." prefix, FSDP shards gathered
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5, msg=key)
    if (run / "model").exists():  # from best.pt: the same epoch must have been the best
        ours, theirs = (load_file(r / "model" / "model.safetensors") for r in (run, reference))
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_two_processes_train_like_one(setup):
    """`modelcycle train --nproc 2` (DDP, gloo): same weights and metrics as one process with the
    same global batch; rank 0 alone writes the files and prints."""
    reference = _reference(setup, "reference")
    result = run_cli("train", *_overrides(setup, "ddp2"), "--nproc", "2", timeout=600)
    assert result.returncode == 0, result.stderr
    run = setup["root"] / "runs" / "ddp2"
    _assert_same_weights(run, reference)

    ours, theirs = read_jsonl(run / "metrics.jsonl"), read_jsonl(reference / "metrics.jsonl")
    assert [m["step"] for m in ours] == [m["step"] for m in theirs]  # each line once, none missing
    for a, b in zip(ours, theirs, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-4), key
        if "val_accuracy" in b:  # validation counts every image once, on whichever rank
            assert (a["val_accuracy"], a["val_top5"]) == (b["val_accuracy"], b["val_top5"])
    events = (run / "events.log").read_text()
    assert events.count("fit start") == 1 and "processes=2 strategy=ddp backend=gloo" in events
    assert events.count(f"checkpoint step={STEPS_PER_EPOCH} ") == 1
    # rank 1 prints nothing: one line per epoch and one summary, from rank 0
    assert result.stderr.count("epoch 1/") == 1 and result.stderr.count("model package in") == 1
    model, manifest = load_model(run)  # the package loads in a single process as it is
    assert manifest["metrics"]["val_accuracy"] == theirs[-1]["val_accuracy"]


@pytest.mark.slow
def test_sigterm_stops_fsdp_workers_and_one_process_resumes(setup):
    """SIGTERM to `--nproc 2` reaches both FSDP workers (and their loader workers, which must
    survive it): they agree on a step, rank 0 saves a full checkpoint, exit 143. One process
    then resumes that checkpoint mid-epoch and ends at the reference weights. With gradient
    accumulation, and with a validation batch only rank 0 has (rank 1 runs a stand-in)."""
    reference = _reference(setup, "reference-accumulate", **ACCUMULATE)
    root = setup["root"]
    gate = root / "gate-open"
    # the 12th training forward (step 6) waits for the gate: the signal arrives by then
    env = {**cli_env(), "MODELCYCLE_TEST_GATE": f"{gate}:12"}
    args = _overrides(setup, "fsdp2", train__strategy="fsdp", data__workers=1, eval__batch_size=64, **ACCUMULATE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelcycle", "train", *args, "--nproc", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = root / "runs" / "fsdp2"
    deadline = time.monotonic() + 500
    while not (run / "metrics.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first line is written after step 5
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    gate.touch()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.count("stopped by SIGTERM") == 1 and "--resume" in err, err
    assert "Traceback" not in err, err
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert saved["world_size"] == 2 and 6 <= saved["state"]["step"] <= 7
    assert saved["state"]["batch_in_epoch"] == 2 * (saved["state"]["step"] - STEPS_PER_EPOCH)  # mid-epoch 2
    assert not (run / "model").exists()

    resumed = api.train(load_config(None, _overrides(setup, "fsdp2", **ACCUMULATE)), resume=True, progress=False)
    _assert_same_weights(resumed.path, reference)
    events = (run / "events.log").read_text()
    assert "checkpoint written by 2 process(es), resumed on 1" in events
    assert "stopped by SIGTERM" in events


@pytest.mark.slow
def test_one_process_run_resumes_on_two(setup):
    """Interrupted on one process mid-epoch, resumed with ``nproc=2`` (the API's launcher):
    the same weights as the uninterrupted run. With gradient accumulation (DDP's no_sync)."""
    reference = _reference(setup, "reference-accumulate", **ACCUMULATE)
    config = load_config(None, _overrides(setup, "one-then-two", **ACCUMULATE))
    with pytest.raises(UserError, match="stopped by SIGINT at step 10"):
        api.train(config, progress=False, callbacks=[InterruptAt(10)])
    run = api.train(config, resume=True, nproc=2)
    _assert_same_weights(run.path, reference)
    events = (run.path / "events.log").read_text()
    assert "resumed from step=10 epoch=2" in events and "resumed on 2" in events
    assert events.count("fit start") == 2


def test_cli_nproc_zero_is_a_clear_error(tmp_path: Path):
    result = run_cli("train", f"data.root={tmp_path}", f"run.dir={tmp_path}", "--nproc", "0")
    assert_user_error(result, "--nproc 0", "at least one process")
