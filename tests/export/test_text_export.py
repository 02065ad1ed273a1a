"""A text classifier exports to ONNX with the same parity check as images, and the ONNX file
answers as PyTorch does, through ONNX Runtime and through modelcycle's text predictor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import modelcycle
from helpers import one_torch_thread
from modelcycle.errors import UserError
from text_fixtures import train_text_classifier


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    return train_text_classifier(tmp_path_factory.mktemp("text-export"))


def test_a_text_classifier_exports_to_onnx_and_matches_pytorch(text_run: Path):
    import onnxruntime as ort
    import torch

    from modelcycle.export.runtime import load_text_predictor
    from modelcycle.packages import open_package

    record = modelcycle.export_model(text_run, "onnx")
    assert record["parity"]["passed"] and record["parity"]["top1_agreement"] == 1.0
    assert record["parity"]["texts"] == 10  # every validation text (2 per topic group)
    manifest = json.loads((text_run / "model" / "modelcycle.json").read_text())
    assert manifest["exports"]["onnx"]["sha256"] == record["sha256"]

    # the file alone, as any ONNX Runtime user runs it: input_ids + attention_mask -> logits
    loaded = open_package(text_run).load_sequence_classifier()
    texts = ["The for statement iterates over a sequence.", "import a module", "x" * 500]
    enc = loaded.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="np")
    session = ort.InferenceSession(str(text_run / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    onnx_logits = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    with torch.no_grad():
        torch_logits = loaded.model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
    np.testing.assert_allclose(onnx_logits, torch_logits.numpy(), atol=1e-4)

    # and through the predictor that serving uses, both backends
    onnx, pt = load_text_predictor(text_run, "onnx"), load_text_predictor(text_run, "torch")
    packed = pt.encode(texts)
    np.testing.assert_allclose(onnx(packed), pt(packed), atol=1e-4)


def test_a_text_classifier_exports_to_onnx_only(text_run: Path):
    with pytest.raises(UserError, match="exports to onnx only"):
        modelcycle.export_model(text_run, "torchscript")


def test_the_text_onnx_file_says_its_classes_tokenizer_and_max_length(text_run: Path, tmp_path: Path):
    import onnxruntime as ort

    from modelcycle.export.runtime import load_predictor

    record = modelcycle.export_model(text_run, "onnx")
    manifest = json.loads((text_run / "model" / "modelcycle.json").read_text())
    session = ort.InferenceSession(str(text_run / "model" / record["file"]), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    assert props["task"] == "text_classify"
    assert json.loads(props["classes"]) == manifest["classes"]
    pre = json.loads(props["preprocessing"])
    assert pre["max_length"] == manifest["preprocessing"]["max_length"] == 32
    assert pre["tokenizer"] == "tokenizer.json" and "model package folder" in pre["tokenizer_location"]
    inputs, outputs = json.loads(props["inputs"]), json.loads(props["outputs"])
    assert [i["name"] for i in inputs] == [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o["name"] for o in outputs] == ["logits"] and outputs[0]["meaning"].startswith("logits")
    assert props["source_run"] == manifest["source_run"]

    # copied alone, the file cannot be tokenized for: the loader says where the tokenizer is
    alone = tmp_path / "text.onnx"
    alone.write_bytes((text_run / "model" / record["file"]).read_bytes())
    with pytest.raises(UserError, match="tokenizer is not inside the file .* pass the model package folder"):
        load_predictor(alone)


def test_cli_export_of_a_text_classifier_counts_texts(text_run: Path):
    from helpers import run_cli

    result = run_cli("export", text_run, "--format", "onnx")
    assert result.returncode == 0, result.stderr
    assert "matches PyTorch on 10 texts" in result.stderr
