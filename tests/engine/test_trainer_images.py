"""The training loop on the image task, for what is about images: the image task's options
(label smoothing, channels_last) and its data checks (no data.root, no validation split,
greyscale JPEGs). The engine's own behaviour is tested on the stub task in test_trainer.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from helpers import make_image_folder, tiny_overrides
from modelcycle import api
from modelcycle.config import load_config
from modelcycle.errors import ConfigError, DataError
from modelcycle.packages import load_model


def test_other_options_run(tiny_config):
    run = api.train(
        tiny_config(
            train__optimizer="sgd",
            train__nesterov="true",
            train__l1=1e-5,
            train__label_smoothing=0.1,
            train__channels_last="true",
            train__weight_decay=1e-4,
            train__epochs=1,
            train__monitor="val_loss",
        ),
        progress=False,
    )
    metrics = run.epoch_metrics()[-1]
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"])


def test_missing_data_root(tiny_config, tmp_path: Path):
    with pytest.raises(ConfigError, match="data.root is not set"):
        api.train(tiny_config("data.root=null"), progress=False)
    with pytest.raises(DataError) as info:
        api.train(tiny_config(f"data.root={tmp_path / 'nowhere'}"), progress=False)
    assert "nowhere" in str(info.value) and "modelcycle prepare" in str(info.value)


def test_no_validation_split(tmp_path: Path, image_folder: Path):
    api.prepare(image_folder, tmp_path / "noval", val=0.0)
    overrides = tiny_overrides(tmp_path / "noval", tmp_path / "runs", train__epochs=1)
    with pytest.raises(ConfigError) as info:
        api.train(load_config(None, overrides), progress=False)
    assert "val_accuracy" in str(info.value) and "train_loss" in str(info.value)
    assert not (tmp_path / "runs" / "tiny").exists()
    run = api.train(load_config(None, [*overrides, "train.monitor=train_loss"]), progress=False)
    metrics = run.epoch_metrics()[-1]
    assert "val_loss" not in metrics and metrics["train_loss"] > 0


def test_greyscale_jpeg_photos_larger_than_the_training_size(tmp_path: Path):
    images = make_image_folder(tmp_path / "grey", mode="L", fmt="jpg", size=48)
    api.prepare(images, tmp_path / "data", val=0.2)
    config = load_config(None, tiny_overrides(tmp_path / "data", tmp_path / "runs", train__epochs=3))
    run = api.train(config, progress=False)
    manifest = load_model(run.path)[1]
    assert manifest["preprocessing"]["channels"] == 1 and manifest["architecture"]["in_channels"] == 1
    metrics = api.evaluate(run)
    assert metrics["num_samples"] == 6
    assert (run.report_dir / "mistakes.png").is_file()
    assert api.predict(run, [images / "class_1" / "000.jpg"], topk=1)[0]["label"] in manifest["classes"]
