"""Export to ONNX and TorchScript: the files run in their own runtimes, match PyTorch on the
run's validation images, and are recorded in modelcycle.json; a mismatch is an error."""

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
from modelcycle.export.formats import onnx_runner, torchscript_runner
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


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
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
    runner = onnx_runner(path) if fmt == "onnx" else torchscript_runner(path)
    with torch.no_grad():
        expected = model(batch).numpy()
    # the batch axis is dynamic: one image and the whole split both run
    np.testing.assert_allclose(runner(batch.numpy()), expected, atol=1e-4)
    np.testing.assert_allclose(runner(batch[:1].numpy()), expected[:1], atol=1e-4)


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
    assert_user_error(result, "tflite", "onnx", "torchscript")


def test_traced_export_that_disagrees_is_refused(tmp_path: Path, prepared: Path):
    from helpers import tiny_overrides

    model_file = tmp_path / "branchy.py"
    model_file.write_text(BRANCHY_MODEL)
    overrides = tiny_overrides(
        prepared, tmp_path / "runs", "branchy", model__name=f"{model_file}:build", model__args="{}", train__epochs=1
    )
    run = modelcycle.train(modelcycle.load_config(None, overrides), progress=False).path
    # the parity batch holds all 6 validation images: eager takes the other branch
    with pytest.raises(UserError) as caught:
        modelcycle.export_model(run, "torchscript")
    assert "does not match the PyTorch model" in str(caught.value)
    assert not (run / "model" / "model.torchscript.pt").exists()
    assert "exports" not in json.loads((run / "model" / "modelcycle.json").read_text())
