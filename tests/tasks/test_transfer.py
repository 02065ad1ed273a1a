"""Fine-tuning from real tiny runs on the bundled digits: a source trained on digits 0-4 starts
runs on 5-9 (all new classes) and 3-7 (3 and 4 keep their head rows); frozen weights stay
bit-identical, unfreezing and the head's learning rate do what they say, a resumed run does not
load the source again, and sources that do not fit fail with the layers named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import modelcycle
from helpers import InterruptAt, read_jsonl, tiny_overrides
from modelcycle.config import TrainSection
from modelcycle.engine.callbacks import Callback
from modelcycle.engine.optim import build_optimizer, build_scheduler
from modelcycle.engine.trainer import TrainingInterrupted
from modelcycle.errors import ConfigError, UserError
from modelcycle.models import transfer
from modelcycle.models.freeze import apply_freeze
from modelcycle.models.registry import build_model
from modelcycle.tasks import classify

HEAD = ("head.weight", "head.bias")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """Prepared folders of digit subsets: 0-4 (40 a class), 5-9 and 3-7 (20 a class)."""
    root = tmp_path_factory.mktemp("transfer")
    modelcycle.write_digits(root / "raw")
    for name, classes, per_class in (
        ("zero_four", "01234", 40),
        ("five_nine", "56789", 20),
        ("three_seven", "34567", 20),
    ):
        for c in classes:
            (root / f"{name}-images" / c).mkdir(parents=True)
            for image in sorted((root / "raw" / c).glob("*.png"))[:per_class]:
                shutil.copy(image, root / f"{name}-images" / c / image.name)
        modelcycle.prepare(root / f"{name}-images", root / name, val=0.25, seed=0)
    return root


@pytest.fixture(scope="module")
def source(digits: Path) -> Path:
    """The pretrained run: simple_cnn width 8 on digits 0-4."""
    overrides = tiny_overrides(digits / "zero_four", digits / "runs", name="source", train__epochs=2)
    return modelcycle.train(modelcycle.load_config(None, overrides), progress=False).path


def config(digits: Path, data: str, name: str, *more: str, **extra):
    return modelcycle.load_config(None, tiny_overrides(digits / data, digits / "runs", name=name, **extra) + list(more))


def weights(package: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(package) / "model.safetensors")


def body(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Everything but the head: weights *and* BatchNorm buffers."""
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Record(Callback):
    """Keeps the model's state after each epoch and each step's group learning rates."""

    def __init__(self):
        self.epochs: list[dict[str, torch.Tensor]] = []
        self.lrs: dict[int, list[float]] = {}

    def on_step_end(self, trainer) -> None:
        self.lrs[trainer.state.step] = [g["lr"] for g in trainer.optimizer.param_groups]

    def on_epoch_end(self, trainer, metrics) -> None:
        self.epochs.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})


# ---------------------------------------------------------------- loading and the class mapping


def test_new_classes_get_a_new_head_and_a_frozen_backbone_stays_bit_identical(digits: Path, source: Path):
    recorder = Record()
    cfg = config(
        digits,
        "five_nine",
        "new-classes",
        f"model.init_from={source}",
        "model.freeze=backbone",
        "train.weight_decay=0.05",  # must not touch the frozen weights either
        "train.head_lr_mult=10",
        train__epochs=2,
    )
    run = modelcycle.train(cfg, progress=False, callbacks=[recorder])

    before, after = weights(source / "model"), weights(run.model_dir)
    assert same(body(after), body(before))  # conv weights and BatchNorm running statistics
    assert not torch.equal(recorder.epochs[1]["head.weight"], recorder.epochs[0]["head.weight"])  # the head trains

    manifest = json.loads((run.model_dir / "modelcycle.json").read_text())
    record = manifest["init_from"]
    source_manifest = json.loads((source / "model" / "modelcycle.json").read_text())
    assert record["source"] == str((source / "model").resolve())
    assert record["sha256"] == source_manifest["weights"]["sha256"]
    assert record["replaced"] == list(HEAD) and record["loaded"] == record["tensors"] - 2
    assert record["class_mapping"] == {"copied": [], "new": list("56789"), "dropped": list("01234")}
    events = (run.path / "events.log").read_text()
    assert "head replaced (head.weight, head.bias)" in events and "rows copied from the source for none" in events
    assert "freeze=backbone:" in events and "train.head_lr_mult=10" in events

    # the head's groups run at 10x the body's, through the schedule; the logged lr is the body's. With
    # weight decay each part has two groups: its decayed weights, then its 1-D parameters undecayed
    assert all(lrs == pytest.approx([lrs[0], lrs[0], 10 * lrs[0], 10 * lrs[0]]) for lrs in recorder.lrs.values())
    logged = [m for m in read_jsonl(run.path / "metrics.jsonl") if "train_loss" in m and "epoch_time_s" not in m]
    assert logged and all(m["lr"] == recorder.lrs[m["step"]][0] for m in logged)

    # an ordinary run: evaluate takes its package as it is
    metrics = modelcycle.evaluate(run.model_dir)
    assert metrics["num_samples"] == 25 and metrics["accuracy"] == pytest.approx(manifest["metrics"]["val_accuracy"])


def test_classes_the_source_knew_keep_their_head_rows(digits: Path, source: Path, tmp_path: Path):
    cfg = config(digits, "three_seven", "overlap", f"model.init_from={source}")
    parts = classify.setup(cfg)
    fresh = {k: v.clone() for k, v in parts.model.state_dict().items()}
    record = transfer.load_init_from(cfg, parts.model, parts.data.classes, parts.preprocessing, tmp_path / "run")

    src, now = weights(source / "model"), parts.model.state_dict()
    assert same(body(now), body(src))
    for name in HEAD:  # rows 0, 1 are classes 3, 4 (rows 3, 4 of the source); 5, 6, 7 keep their fresh rows
        assert torch.equal(now[name][:2], src[name][3:5])
        assert torch.equal(now[name][2:], fresh[name][2:])
    assert record["class_mapping"] == {"copied": ["3", "4"], "new": ["5", "6", "7"], "dropped": ["0", "1", "2"]}
    lines = "\n".join(transfer.describe(record))
    assert "rows copied from the source for 3, 4; new (fresh rows): 5, 6, 7" in lines
    assert "source classes not in this run: 0, 1, 2" in lines


def test_a_grey_source_starts_an_rgb_run_with_its_stem_spread_over_the_channels(digits: Path, source: Path, tmp_path):
    cfg = config(digits, "five_nine", "rgb", f"model.init_from={source}", "data.channels=3", "data.image_size=24")
    parts = classify.setup(cfg)
    record = transfer.load_init_from(cfg, parts.model, parts.data.classes, parts.preprocessing, tmp_path / "run")
    stem = weights(source / "model")["features.0.0.weight"]  # [8, 1, 3, 3]
    assert torch.equal(parts.model.state_dict()["features.0.0.weight"], stem.repeat(1, 3, 1, 1) / 3)
    assert record["adapted"] == ["features.0.0.weight: 1 -> 3 input channels (repeated and divided by 3)"]
    assert any("image_size 16 -> 24" in note for note in record["notes"])


# ---------------------------------------------------------------- freeze, unfreeze, resume


def test_unfreeze_at_epoch_lets_the_backbone_train_from_that_epoch(digits: Path, source: Path):
    recorder = Record()
    cfg = config(
        digits,
        "five_nine",
        "unfreeze",
        f"model.init_from={source}",
        "model.freeze=backbone",
        "train.unfreeze_at_epoch=2",
        train__epochs=2,
    )
    run = modelcycle.train(cfg, progress=False, callbacks=[recorder])
    src = body(weights(source / "model"))
    assert same(body(recorder.epochs[0]), src)  # epoch 1: frozen, BatchNorm statistics included
    changed = {k for k in src if not torch.equal(recorder.epochs[1][k], src[k])}
    assert {"features.0.0.weight", "features.0.1.running_mean"} <= changed  # epoch 2: everything trains
    assert "epoch 2: train.unfreeze_at_epoch=2, freeze=none:" in (run.path / "events.log").read_text()


def test_a_resumed_run_does_not_load_the_source_again(digits: Path, source: Path):
    """Interrupted in epoch 1 (still frozen) and in epoch 3 (unfrozen at 2), with the source
    deleted before resuming: the same bits as the uninterrupted run, and the same record."""
    copy = digits / "source-copy"
    shutil.copytree(source / "model", copy)
    settings = [f"model.init_from={copy}", "model.freeze=backbone", "train.unfreeze_at_epoch=2"]
    straight = modelcycle.train(config(digits, "five_nine", "straight", *settings, train__epochs=3), progress=False)

    cfg = config(digits, "five_nine", "stopped", *settings, train__epochs=3)  # 75 images, 10 steps an epoch
    with pytest.raises(TrainingInterrupted):
        modelcycle.train(cfg, progress=False, callbacks=[InterruptAt(4)])
    shutil.rmtree(copy)
    with pytest.raises(TrainingInterrupted):
        modelcycle.train(cfg, resume=True, progress=False, callbacks=[InterruptAt(24)])
    resumed = modelcycle.train(cfg, resume=True, progress=False)

    assert same(weights(resumed.model_dir), weights(straight.model_dir))
    manifest = json.loads((resumed.model_dir / "modelcycle.json").read_text())
    assert manifest["init_from"] == json.loads((straight.model_dir / "modelcycle.json").read_text())["init_from"]
    events = (resumed.path / "events.log").read_text()
    assert events.count("tensors loaded from") == 1 and events.count("not loaded again") == 2


# ---------------------------------------------------------------- the optimizer


def test_head_lr_mult_puts_the_head_in_its_own_group_and_one_group_otherwise():
    model = build_model("simple_cnn", 1, 5, 16, {"width": 8})
    head = {id(p) for p in model.head.parameters()}
    cfg = TrainSection(lr=0.01, head_lr_mult=10, epochs=2, warmup_epochs=0.5)
    optimizer = build_optimizer(model, cfg)
    body_group, head_group = optimizer.param_groups
    assert {id(p) for p in head_group["params"]} == head and not head & {id(p) for p in body_group["params"]}
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=4)
    for _ in range(5):  # through warm-up and into the cosine: each group's own base lr is scaled
        optimizer.step()
        scheduler.step()
        assert head_group["lr"] == pytest.approx(10 * body_group["lr"]) and 0 < body_group["lr"] <= 0.01

    # the default: one group of every parameter, as before (checkpoints stay compatible)
    (only,) = build_optimizer(model, TrainSection()).param_groups
    assert [id(p) for p in only["params"]] == [id(p) for p in model.parameters()]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_frozen_parameters_get_no_update_and_no_weight_decay(optimizer: str):
    model = build_model("simple_cnn", 1, 5, 16, {"width": 8})
    apply_freeze(model, "backbone")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, TrainSection(optimizer=optimizer, weight_decay=0.5, lr=0.1))
    model.train()
    for _ in range(3):
        model(torch.randn(4, 1, 16, 16)).logsumexp(1).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    after = model.state_dict()
    assert same(body(after), body(before))
    assert not torch.equal(after["head.weight"], before["head.weight"])


def test_head_lr_mult_needs_a_head():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"train.head_lr_mult=3, but the model has no classification head"):
        build_optimizer(model, TrainSection(head_lr_mult=3))


# ---------------------------------------------------------------- sources that do not fit


def test_an_incompatible_architecture_names_the_layers(digits: Path, source: Path):
    wider = config(digits, "five_nine", "wider", f"model.init_from={source}", "model.args={width: 16}")
    with pytest.raises(ConfigError) as error:
        modelcycle.train(wider, progress=False)
    text = str(error.value)
    assert "does not fit this run's model" in text
    assert "features.0.0.weight: source [8, 1, 3, 3], this run [16, 1, 3, 3]" in text
    assert "and 3 more" in text  # 13 parameters (4 convs, 4 BatchNorms' weight and bias, the head), ten shown
    assert "running_mean" not in text  # the BatchNorm statistics follow their layers: not listed
    assert "model.name=simple_cnn model.args={'width': 8, 'dropout': 0.0}" in text and "drop model.init_from" in text
    assert not (digits / "runs" / "wider").exists()

    other = config(digits, "five_nine", "resnet", f"model.init_from={source}", "model.name=resnet18")
    with pytest.raises(ConfigError, match=r"(?s)missing in the source.*not in this run's model"):
        modelcycle.train(other, progress=False)


def test_bad_sources_fail_clearly(digits: Path, source: Path, tmp_path: Path):
    missing = config(digits, "five_nine", "bad", f"model.init_from={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match=r"model.init_from: .*nowhere does not exist; give a run folder"):
        modelcycle.train(missing, progress=False)
    not_a_run = config(digits, "five_nine", "bad", f"model.init_from={digits / 'five_nine'}")
    with pytest.raises(ConfigError, match=r"model.init_from: .* is neither a run folder nor a model package"):
        modelcycle.train(not_a_run, progress=False)

    damaged = tmp_path / "damaged"
    shutil.copytree(source / "model", damaged)
    data = bytearray((damaged / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (damaged / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match the sha256"):
        modelcycle.train(config(digits, "five_nine", "bad", f"model.init_from={damaged}"), progress=False)

    own = config(digits, "zero_four", "source", f"model.init_from={source}")
    with pytest.raises(UserError, match="is this run's own folder"):
        modelcycle.train(own, overwrite=True, progress=False)
    assert (source / "model" / "modelcycle.json").is_file()
    assert not (digits / "runs" / "bad").exists()
