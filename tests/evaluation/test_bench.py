"""``bench``: one row per package and backend, failures as rows, --min-accuracy as the exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import modelcycle
from helpers import copy_run, run_cli, tiny_overrides
from modelcycle.compress.quantize import quantize_int8
from modelcycle.evaluation.bench import FAILED, MISMATCH, REFERENCE, VALIDATED, bench

# branches on the batch size: a traced TorchScript export cannot be faithful
BRANCHY = """
from torch import nn


class Branchy(nn.Module):
    def __init__(self, features, num_classes):
        super().__init__()
        self.linear = nn.Linear(features, num_classes)

    def forward(self, x):
        out = self.linear(x.flatten(1))
        return out if x.shape[0] > 2 else -out


def build(in_channels, num_classes, image_size):
    return Branchy(in_channels * image_size * image_size, num_classes)
"""


@pytest.fixture(scope="module")
def packages(trained: Path, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(a copy of the shared run of tests/conftest.py, its int8 package, a run of the branchy model
    on the same data)."""
    root = tmp_path_factory.mktemp("bench")
    run = copy_run(trained, root)
    quantize_int8(run, root / "int8", calib=16)
    (root / "branchy.py").write_text(BRANCHY)
    overrides = tiny_overrides(
        root / "data",
        root / "runs",
        "branchy",
        model__name=f"{root / 'branchy.py'}:build",
        model__args="{}",
        train__epochs=1,
    )
    branchy = modelcycle.train(modelcycle.load_config(None, overrides), progress=False)
    return run, root / "int8" / "model", branchy.path


def test_a_row_per_package_and_backend_with_real_accuracy(packages):
    run, int8, _ = packages
    rows = bench([run, int8], seconds=0.2)
    assert [(Path(r["package"]), r["backend"]) for r in rows] == [
        (run, "torch"),
        (run, "torchscript"),
        (run, "onnx"),
        (int8, "onnx int8"),
    ]
    assert [r["status"] for r in rows] == [REFERENCE, VALIDATED, VALIDATED, VALIDATED]
    reference = modelcycle.evaluate(run, backend="torch")["accuracy"]
    assert rows[0]["accuracy"] == pytest.approx(reference)
    for r in rows:
        assert r["bytes"] > 0 and r["throughput_b32"] > 0 and 0 < r["latency_p50_ms"] <= r["latency_p99_ms"]


def test_a_failing_export_is_a_row_not_a_crash(packages):
    _, _, branchy = packages
    rows = {r["backend"]: r for r in bench([branchy], seconds=0.2)}
    assert rows["torch"]["status"] == REFERENCE
    assert rows["torchscript"]["status"] == MISMATCH and "does not match" in rows["torchscript"]["error"]
    assert rows["onnx"]["status"] in (VALIDATED, MISMATCH, FAILED)


def test_cli_min_accuracy_sets_the_exit_code(packages):
    run, int8, _ = packages
    ok = run_cli("bench", int8, "--seconds", "0.2", "--min-accuracy", "0.0", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)[0]["backend"] == "onnx int8"
    failing = run_cli("bench", int8, "--seconds", "0.2", "--min-accuracy", "1.01")
    assert failing.returncode == 1
    assert "below --min-accuracy" in failing.stderr
