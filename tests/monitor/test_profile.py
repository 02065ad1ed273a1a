"""The reference profile that training writes into the package."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

import modelcycle
from helpers import assert_mentions
from modelcycle.cli import app
from modelcycle.data.manifest import PreparedData
from modelcycle.evaluation.inference import preprocess
from modelcycle.monitor.profile import PROFILE, embedding_summary, read_profile
from modelcycle.packages import load_model


def test_training_writes_a_profile_of_the_validation_data(digits_run: Path):
    profile = read_profile(digits_run)
    assert profile is not None and (digits_run / "model" / PROFILE).is_file()
    val = PreparedData.open(digits_run.parents[1] / "data").split("val")
    assert profile["images"] == len(val) and "val split" in profile["source"]
    assert set(profile["features"]) == {"brightness", "contrast", "sharpness", "horizontal_edges", "size", "confidence"}
    # size is the file's, read from its header: the bundled digits are all 8 x 8 pixels
    assert profile["features"]["size"]["mean"] == 8.0 and set(profile["features"]["size"]["sample"]) == {8.0}
    assert abs(sum(profile["class_shares"]) - 1) < 1e-9
    assert profile["accuracy"] > 0.8
    # the OOD threshold is calibrated: ood_quantile of the validation images fall under it
    sample = np.asarray(profile["features"]["confidence"]["sample"])
    assert abs((sample < profile["ood"]["threshold"]).mean() - profile["ood"]["quantile"]) <= 1 / len(val) + 1e-9


def test_the_embedding_coordinates_computed_from_logits_equal_those_of_the_real_embedding(digits_run: Path):
    """The server only has logits; the map in the profile must give what the penultimate layer gives."""
    profile = read_profile(digits_run)
    embedding = profile["embedding"]
    model, manifest = load_model(digits_run)
    items = PreparedData.open(digits_run.parents[1] / "data").split("train")[:64]
    captured = []
    model.head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    with torch.no_grad():
        logits = model(preprocess(manifest, items)).double().numpy()
    real = captured[0].double().numpy()
    whitened = (real - embedding["mean"]) @ np.asarray(embedding["basis"]).T / np.sqrt(embedding["explained_variance"])
    from_logits = logits @ np.asarray(embedding["from_logits"]["matrix"]).T + embedding["from_logits"]["offset"]
    assert np.allclose(from_logits, whitened, atol=1e-4)
    assert len(embedding["basis"]) == 8 and embedding["dim"] == real.shape[1]
    # on the reference itself the coordinates are whitened: mean 0, variance 1
    reference = np.asarray(embedding["sample"])
    assert np.allclose(reference.mean(0), 0, atol=1e-3) and np.allclose(reference.std(0), 1, atol=0.01)


def test_an_old_package_gets_its_profile_from_the_profile_command(digits_run: Path, tmp_path: Path):
    package = tmp_path / "model"
    shutil.copytree(digits_run / "model", package)
    (package / PROFILE).unlink()
    result = CliRunner().invoke(app, ["profile", str(package), "--images", "100"])
    assert result.exit_code == 0, result.output
    assert_mentions(result.stderr, "profile of 100 images", str(package / PROFILE), "embedding 8 components")
    assert read_profile(package)["images"] == 100
    # a profile of other weights (the package was retrained) does not count
    stale = json.loads((package / PROFILE).read_text()) | {"weights_sha256": "0" * 64}
    (package / PROFILE).write_text(json.dumps(stale))
    assert read_profile(package) is None


def test_a_user_model_file_gets_its_embedding_from_its_last_linear_layer(tiny_config, linear_model_file):
    """No `head` attribute: the last Linear is the head, and its input (the flattened image) the embedding."""
    config = tiny_config(model__name=linear_model_file, model__args="{}", train__epochs=1)
    run = modelcycle.train(config, progress=False)
    embedding = read_profile(run.path)["embedding"]
    assert embedding["dim"] == 3 * 16 * 16
    assert 1 <= len(embedding["basis"]) <= 3  # at most the head's rank: 3 classes


def test_no_embedding_when_the_reference_does_not_vary():
    weight, bias = np.eye(3, 4), np.zeros(3)
    assert embedding_summary(np.ones((1, 4)), weight, bias) is None
    summary = embedding_summary(np.random.default_rng(0).normal(size=(50, 4)), weight, bias)
    assert len(summary["basis"]) == 3 and np.allclose(np.asarray(summary["basis"]) @ [0, 0, 0, 1], 0)
