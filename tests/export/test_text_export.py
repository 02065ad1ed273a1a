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
