"""int8 quantization: a normal package that evaluate and predict take, checked on real images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import modelcycle
from helpers import assert_user_error, copy_run, run_cli
from modelcycle.compress.quantize import quantize_int8
from modelcycle.errors import UserError
from modelcycle.export.runtime import load_predictor


@pytest.fixture(scope="module")
def trained(trained: Path, tmp_path_factory) -> Path:
    """This module's copy of the shared run (tests/conftest.py): quantizing exports the fp32 ONNX
    model into its package, and the tests check that it had none before."""
    return copy_run(trained, tmp_path_factory.mktemp("quantize"))


@pytest.fixture(scope="module")
def int8(trained: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8")
    quantize_int8(trained, out, calib=16)
    return out / "model"


def test_int8_package_is_an_onnx_package_with_its_recipe(trained: Path, int8: Path):
    manifest = json.loads((int8 / "modelcycle.json").read_text())
    assert manifest["backend"] == "onnx"
    assert (int8 / manifest["weights"]["file"]).is_file()
    q = manifest["quantization"]
    assert q["format"] == "QDQ" and q["calibration_images"] == 16 and len(q["kept_fp32"]) == 1
    assert q["agreement_with_fp32"]["top1_agreement"] >= 0.9
    assert manifest["classes"] == json.loads((trained / "model" / "modelcycle.json").read_text())["classes"]
    # quantizing exported the fp32 ONNX model into the source package on the way
    assert "onnx" in json.loads((trained / "model" / "modelcycle.json").read_text())["exports"]


def test_the_int8_file_keeps_the_metadata_and_says_it_is_quantized(trained: Path, int8: Path):
    import onnxruntime as ort

    file = int8 / json.loads((int8 / "modelcycle.json").read_text())["weights"]["file"]
    props = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    source = json.loads((trained / "model" / "modelcycle.json").read_text())
    assert json.loads(props["classes"]) == source["classes"]
    assert json.loads(props["preprocessing"])["mean"] == source["preprocessing"]["mean"]
    assert json.loads(props["compression"])["quantization"]["format"] == "QDQ"
    assert props["source_weights_sha256"] == source["weights"]["sha256"]  # the fp32 weights it was made from


def test_evaluate_and_predict_take_the_int8_package(trained: Path, int8: Path):
    fp32 = modelcycle.evaluate(trained)
    quantized = modelcycle.evaluate(int8)  # a bare package finds the val split it was trained on
    assert quantized["backend"] == "onnx" and fp32["backend"] == "torch"
    assert quantized["num_samples"] == fp32["num_samples"]
    assert abs(quantized["accuracy"] - fp32["accuracy"]) <= 0.34  # one of 3 classes on 6 images at worst
    image = next((trained / "..").resolve().parent.glob("images/class_0/*.png"))
    result = modelcycle.predict(int8, [image])[0]
    assert result["label"] in manifest_classes(int8)


def manifest_classes(package: Path) -> list[str]:
    return json.loads((package / "modelcycle.json").read_text())["classes"]


def test_a_tampered_int8_file_is_refused(int8: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(int8, copy)
    weights = copy / json.loads((copy / "modelcycle.json").read_text())["weights"]["file"]
    weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)
    with pytest.raises(UserError, match="sha256"):
        load_predictor(copy)


def test_backends_say_what_is_missing(trained: Path, int8: Path, tmp_path: Path):
    with pytest.raises(UserError, match="holds a onnx model only"):
        load_predictor(int8, "torch")
    with pytest.raises(UserError, match="no torchscript export"):
        load_predictor(trained, "torchscript")


def test_cli_compress_and_bad_options(trained: Path, tmp_path: Path):
    result = run_cli("compress", trained, "--quantize", "int4", "--out", tmp_path / "q")
    assert_user_error(result, "int4", "int8")
    result = run_cli("compress", trained, "--calib", "0", "--out", tmp_path / "q")
    assert_user_error(result, "--calib 0")
    assert not (tmp_path / "q" / "model").exists()
