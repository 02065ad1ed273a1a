"""Export to ONNX, TorchScript and .pt2 (torch.export): the files run in their own runtimes, match
PyTorch on the run's validation images, and are recorded in modelcycle.json; a mismatch is an error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import modelcycle
from helpers import assert_user_error, copy_run, run_cli
from modelcycle.errors import UserError
from modelcycle.evaluation.inference import preprocess
from modelcycle.export.formats import onnx_runner, pt2_runner, torchscript_runner
from modelcycle.export.runtime import load_predictor
from modelcycle.runs import read_manifest, sha256_file

# forward branches on the batch size: tracing (done on a batch of 2) freezes one branch
BRANCHY_MODEL = """
import torch
from torch import nn


class Branchy(nn.Module):
    def __init__(self, features, num_classes):
        super().__init__()
        self.linear = nn.Linear(features, num_classes)

    def forward(self, x):
        if x.shape[0] > 2:
            return self.linear(x.flatten(1))
        return -self.linear(x.flatten(1))


def build(in_channels, num_classes, image_size):
    return Branchy(in_channels * image_size * image_size, num_classes)
"""


@pytest.fixture(scope="module")
def trained(trained: Path, tmp_path_factory) -> Path:
    """This module's copy of the shared run (tests/conftest.py): exporting writes into its package."""
    return copy_run(trained, tmp_path_factory.mktemp("export"))


RUNNERS = {"onnx": onnx_runner, "torchscript": torchscript_runner, "pt2": pt2_runner}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_export_runs_in_its_runtime_and_matches_pytorch(trained: Path, fmt: str):
    record = modelcycle.export_model(trained, fmt)
    package = trained / "model"
    path = package / record["file"]
    manifest = read_manifest(trained)
    assert manifest["exports"][fmt]["sha256"] == sha256_file(path)
    assert manifest["exports"][fmt]["parity"]["passed"] is True
    assert manifest["exports"][fmt]["parity"]["images"] > 0

    model, _ = modelcycle.packages.load_model(trained)
    items = modelcycle.runs.Run.open(trained).config  # the run's own val split
    from modelcycle.data.manifest import PreparedData

    val = PreparedData.open(items.data.root).split("val")
    batch = preprocess(manifest, val)
    runner = RUNNERS[fmt](path)
    with torch.no_grad():
        expected = model(batch).numpy()
    # the batch axis is dynamic: one image and the whole split both run
    np.testing.assert_allclose(runner(batch.numpy()), expected, atol=1e-4)
    np.testing.assert_allclose(runner(batch[:1].numpy()), expected[:1], atol=1e-4)
    # and evaluate/predict/serve take it as a backend
    np.testing.assert_allclose(load_predictor(trained, fmt)(batch.numpy()), expected, atol=1e-4)


def test_pt2_reloads_with_torch_export_load_and_runs_any_batch(trained: Path):
    record = modelcycle.export_model(trained, "pt2")
    assert record["file"] == "model.pt2" and record["dynamic"] == ["batch"]
    program = torch.export.load(str(trained / "model" / "model.pt2"))  # what a user without modelcycle runs
    model, manifest = modelcycle.packages.load_model(trained)
    images = torch.randn(5, manifest["preprocessing"]["channels"], 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(program.module()(images).numpy(), model.eval()(images).numpy(), atol=1e-5)


def test_onnx_file_is_self_contained_and_records_its_opset(trained: Path):
    record = modelcycle.export_model(trained, "onnx", opset=18)
    model = onnx.load(str(trained / "model" / record["file"]))
    onnx.checker.check_model(model)
    assert any(op.domain in ("", "ai.onnx") and op.version == 18 for op in model.opset_import)
    assert not list((trained / "model").glob("*.data")), "weights must live inside the .onnx file"
    assert record["opset"] == 18


def test_cli_export_prints_parity(trained: Path):
    result = run_cli("export", trained, "--format", "torchscript")
    assert result.returncode == 0, result.stderr
    assert "top-1 agreement 100.0%" in result.stderr


def test_unknown_format_is_a_clear_error(trained: Path):
    result = run_cli("export", trained, "--format", "tflite")
    assert_user_error(result, "tflite", "onnx", "torchscript", "pt2")


def test_an_opset_for_a_format_without_one_is_refused(trained: Path):
    with pytest.raises(UserError, match="--opset 17 is an ONNX setting; --format pt2 has no opset"):
        modelcycle.export_model(trained, "pt2", opset=17)


@pytest.fixture(scope="module")
def branchy(tmp_path_factory, shapes_data: Path) -> Path:
    """A run of BRANCHY_MODEL (one epoch on the shared shapes data: 6 validation images)."""
    from helpers import tiny_overrides

    root = tmp_path_factory.mktemp("branchy")
    model_file = root / "branchy.py"
    model_file.write_text(BRANCHY_MODEL)
    overrides = tiny_overrides(
        shapes_data, root / "runs", "branchy", model__name=f"{model_file}:build", model__args="{}", train__epochs=1
    )
    return modelcycle.train(modelcycle.load_config(None, overrides), progress=False).path


def test_traced_export_that_disagrees_is_refused(branchy: Path):
    run = branchy
    # the parity batch holds all 6 validation images: eager takes the other branch
    with pytest.raises(UserError) as caught:
        modelcycle.export_model(run, "torchscript")
    assert "does not match the PyTorch model" in str(caught.value)
    assert not (run / "model" / "model.torchscript.pt").exists()
    assert "exports" not in json.loads((run / "model" / "modelcycle.json").read_text())


def test_pt2_of_a_model_torch_export_cannot_capture_says_what_to_use_instead(branchy: Path):
    # forward branches on the batch size, which a dynamic batch axis leaves open
    result = run_cli("--trust-code", "export", branchy, "--format", "pt2")  # its architecture is a Python file
    assert_user_error(result, "torch.export cannot capture", "--format onnx", "--format torchscript")
    assert not (branchy / "model" / "model.pt2").exists()
    assert not list((branchy / "model").glob("tmp-*"))
    assert "exports" not in json.loads((branchy / "model" / "modelcycle.json").read_text())
