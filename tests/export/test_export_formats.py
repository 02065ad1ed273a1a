"""What a package exports to is its task plugin's word (``TaskPlugin.export_formats``): a format
the task does not list is refused before any model is loaded, naming the task and what it offers."""

from __future__ import annotations

import json

import pytest
import torch

import modelcycle
from modelcycle import runs
from modelcycle.errors import UserError


def _package(folder, task: str, architectures: list[str]):
    """A package as the task writes it, as far as choosing an exporter reads: manifest and config.json."""
    runs.write_package(folder, {"w": torch.zeros(2)}, {"task": task, "backend": "transformers"})
    (folder / "config.json").write_text(json.dumps({"architectures": architectures}))
    return folder


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_a_language_model_has_no_export(tmp_path, fmt):
    package = _package(tmp_path / "lm", "lm", ["LlamaForCausalLM"])
    with pytest.raises(UserError, match=rf"--format {fmt}: .* holds a model of task lm, which has no export"):
        modelcycle.export_model(package, fmt)
    assert json.loads((package / "modelcycle.json").read_text()).get("exports") is None


def test_a_reward_model_has_no_export(tmp_path):
    package = _package(tmp_path / "reward", "reward", ["BertForSequenceClassification"])
    with pytest.raises(UserError, match="holds a model of task reward, which has no export"):
        modelcycle.export_model(package, "onnx")
