"""Run folders and model packages: written atomically, checked before use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from modelcycle import runs
from modelcycle.errors import UserError
from modelcycle.packages import load_model
from modelcycle.runs import Run, package_dir, read_manifest, write_package

ARCH = {"name": "simple_cnn", "args": {"width": 4}, "in_channels": 1, "num_classes": 3, "image_size": 16}


def _package(tmp_path: Path) -> tuple[Path, nn.Module]:
    from modelcycle.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("simple_cnn", 1, 3, 16, {"width": 4})
    out = write_package(
        tmp_path / "model",
        model.state_dict(),
        {"architecture": ARCH, "classes": ["a", "b", "c"], "preprocessing": {"channels": 1}},
    )
    return out, model


def test_package_round_trip(tmp_path: Path):
    out, model = _package(tmp_path)
    manifest = json.loads((out / "modelcycle.json").read_text())
    assert manifest["format"] == runs.PACKAGE_FORMAT
    assert manifest["weights"]["sha256"] == runs.sha256_file(out / "model.safetensors")
    loaded, info = load_model(out)
    assert not loaded.training and info["classes"] == ["a", "b", "c"]
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_tampered_weights_are_refused(tmp_path: Path):
    out, _ = _package(tmp_path)
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256"):
        load_model(out)


def test_missing_or_broken_manifest(tmp_path: Path):
    out, _ = _package(tmp_path)
    (out / "model.safetensors").unlink()
    with pytest.raises(UserError, match="missing"):
        load_model(out)
    (out / "modelcycle.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_manifest(out)
    (out / "modelcycle.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(UserError, match="unknown package format"):
        read_manifest(out)


def test_package_dir_finds_the_package_or_explains(tmp_path: Path):
    out, _ = _package(tmp_path)
    assert package_dir(tmp_path) == out and package_dir(out) == out
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    with pytest.raises(UserError, match="no model package yet"):
        package_dir(run)
    with pytest.raises(UserError, match="neither a run folder nor a model package"):
        package_dir(tmp_path / "empty")


def test_rewriting_a_package_replaces_it_whole(tmp_path: Path):
    out, _ = _package(tmp_path)
    first = read_manifest(out)["weights"]["sha256"]
    torch.manual_seed(1)
    from modelcycle.models.registry import build_model

    other = build_model("simple_cnn", 1, 3, 16, {"width": 4})
    write_package(out, other.state_dict(), {"architecture": ARCH, "classes": ["a", "b", "c"]})
    assert read_manifest(out)["weights"]["sha256"] != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .tmp or .old folders left


def test_run_open_needs_a_config(tmp_path: Path):
    with pytest.raises(UserError, match="not a run folder"):
        Run.open(tmp_path)
    (tmp_path / "config.yaml").write_text("train:\n  epochs: 3\n")
    run = Run.open(tmp_path)
    assert run.config.train.epochs == 3 and run.metrics == [] and run.name == tmp_path.name
