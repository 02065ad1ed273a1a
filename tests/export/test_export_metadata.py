"""Exports describe themselves: the class names, preprocessing, input/output names and provenance
travel inside the file (ONNX metadata_props; extra files of .pt2 and TorchScript archives), so a
user holding only the exported file preprocesses and labels correctly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image, ImageOps

import modelcycle
from helpers import copy_run
from modelcycle.data.manifest import PreparedData
from modelcycle.errors import UserError
from modelcycle.evaluation.inference import predict_items
from modelcycle.export.metadata import EXTRA_FILE, FORMAT
from modelcycle.export.runtime import load_predictor
from modelcycle.runs import read_manifest


@pytest.fixture(scope="module")
def trained(trained: Path, tmp_path_factory) -> Path:
    """This module's copy of the shared run (tests/conftest.py), exported to every format once."""
    run = copy_run(trained, tmp_path_factory.mktemp("metadata"))
    for fmt in ("onnx", "torchscript", "pt2"):
        modelcycle.export_model(run, fmt)
    return run


JSON_TEXT = ("classes", "preprocessing", "inputs", "outputs", "compression")  # the documented JSON-valued keys


def onnx_metadata(path: Path) -> dict:
    """What ONNX Runtime users read: custom_metadata_map, lists and objects as JSON text."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    return {k: json.loads(v) if k in JSON_TEXT else v for k, v in props.items()}


def test_onnx_metadata_holds_classes_preprocessing_names_and_provenance(trained: Path):
    manifest = read_manifest(trained)
    path = trained / "model" / "model.onnx"
    meta = onnx_metadata(path)
    assert meta["format"] == FORMAT and meta["task"] == "classify"
    assert meta["classes"] == manifest["classes"]
    pre = meta["preprocessing"]
    assert (pre["image_size"], pre["channels"], pre["channel_order"]) == (16, 3, "RGB")
    assert pre["mean"] == manifest["preprocessing"]["mean"] and pre["std"] == manifest["preprocessing"]["std"]
    assert pre["pixel_scale"] == pytest.approx(1 / 255) and pre["layout"] == "NCHW"
    assert (pre["resize_to"], pre["keep_aspect"]) == (16, True)
    assert "centre" in pre["resize"] and "shorter side" in pre["resize"]
    assert meta["modelcycle_version"] == modelcycle.__version__
    assert meta["source_run"] == manifest["source_run"]
    assert meta["source_weights_sha256"] == manifest["weights"]["sha256"]
    assert meta["architecture"] == "simple_cnn"

    # the names it gives are the graph's own, and the output is said to be logits
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i["name"] for i in meta["inputs"]] == [i.name for i in session.get_inputs()]
    assert [o["name"] for o in meta["outputs"]] == [o.name for o in session.get_outputs()]
    assert meta["inputs"][0]["shape"][1:] == session.get_inputs()[0].shape[1:] == [3, 16, 16]
    assert meta["outputs"][0]["meaning"].startswith("logits")

    # onnx.load reads the same strings
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["classes"]) == manifest["classes"]


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_torch_archives_carry_the_same_metadata(trained: Path, fmt: str):
    manifest = read_manifest(trained)
    file = trained / "model" / manifest["exports"][fmt]["file"]
    extra = {EXTRA_FILE: ""}
    if fmt == "pt2":
        torch.export.load(str(file), extra_files=extra)
    else:
        torch.jit.load(str(file), _extra_files=extra)
    meta = json.loads(extra[EXTRA_FILE])
    assert meta == onnx_metadata(trained / "model" / "model.onnx")


def preprocess_as_the_metadata_says(path: Path, pre: dict) -> np.ndarray:
    """What a user with only the .onnx file writes, reading nothing but its preprocessing."""
    size, side = pre["image_size"], pre["resize_to"]
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("L" if pre["channel_order"] == "greyscale" else "RGB")
    scale = side / min(image.size)
    stretched = (side, side) if not pre["keep_aspect"] else (round(image.width * scale), round(image.height * scale))
    image = image.resize(stretched, Image.BILINEAR)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), np.float32).reshape(size, size, -1)
    normalised = (pixels * pre["pixel_scale"] - np.float32(pre["mean"])) / np.float32(pre["std"])
    return normalised.transpose(2, 0, 1).astype(np.float32)


def test_an_onnx_file_copied_alone_is_labelled_from_its_metadata(trained: Path, tmp_path: Path):
    alone = tmp_path / "elsewhere" / "classifier.onnx"
    alone.parent.mkdir()
    shutil.copy(trained / "model" / "model.onnx", alone)
    items = PreparedData.open(read_manifest(trained)["data_root"]).split("val")
    reference = predict_items(load_predictor(trained, "torch"), items)  # the package, through modelcycle

    # plain ONNX Runtime + Pillow, with only what the file says
    meta = onnx_metadata(alone)
    session = ort.InferenceSession(str(alone), providers=["CPUExecutionProvider"])
    batch = np.stack([preprocess_as_the_metadata_says(path, meta["preprocessing"]) for path, _ in items])
    logits = session.run(None, {meta["inputs"][0]["name"]: batch})[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    labels = [meta["classes"][i] for i in probs.argmax(1)]
    assert labels == [read_manifest(trained)["classes"][i] for i in reference.argmax(1)]

    # modelcycle's own loader takes the lone file as well
    predictor = load_predictor(alone)
    assert predictor.backend == "onnx" and predictor.manifest["classes"] == meta["classes"]
    np.testing.assert_allclose(predict_items(predictor, items), reference, atol=1e-5)
    with pytest.raises(UserError, match="runs on backend onnx, not torchscript"):
        load_predictor(alone, "torchscript")


def test_an_onnx_file_without_our_metadata_is_a_clear_error(trained: Path, tmp_path: Path):
    model = onnx.load(str(trained / "model" / "model.onnx"))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(UserError, match="carries no modelcycle metadata .* pass its model package folder"):
        load_predictor(bare)


def test_a_pruned_package_exports_with_its_metadata_and_pruning_record(trained: Path, tmp_path: Path):
    modelcycle.prune_model(trained, tmp_path / "pruned", 0.5, recalibrate=0, progress=False)
    record = modelcycle.export_model(tmp_path / "pruned", "onnx")
    meta = onnx_metadata(tmp_path / "pruned" / "model" / record["file"])
    assert meta["classes"] == read_manifest(trained)["classes"]
    assert meta["compression"]["pruning"]["target"] == 0.5
    assert meta["source_run"] == str((trained / "model").resolve())  # the package it was pruned from
