"""The reference profile from training's own validation pass (monitor/profile_recorder.py): it
equals the profile a pass of its own makes, on the same bounded, deterministic sample, and
training falls back to such a pass where the validation pass is not the package's view."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import modelcycle
from helpers import tiny_overrides
from modelcycle.config import MonitorSection
from modelcycle.monitor import profile as profile_module
from modelcycle.monitor.profile import PROFILE, read_profile, write_profile
from modelcycle.monitor.profile_recorder import sample_indices


def _train(digits_data: Path, runs: Path, *extra: str) -> Path:
    overrides = tiny_overrides(digits_data, runs, name="run", train__epochs=2, train__batch_size=32)
    return modelcycle.train(modelcycle.load_config(None, [*overrides, *extra]), progress=False).path


def _assert_same_profile(a: dict, b: dict) -> None:
    assert {k: v for k, v in a.items() if k not in ("created", "features", "embedding")} == {
        k: v for k, v in b.items() if k not in ("created", "features", "embedding")
    }
    assert a["features"].keys() == b["features"].keys()
    for name in a["features"]:
        for key in ("mean", "std", "edges", "shares", "sample"):
            np.testing.assert_allclose(a["features"][name][key], b["features"][name][key], rtol=1e-4, atol=1e-5)
    for key in ("mean", "explained_variance", "sample"):
        np.testing.assert_allclose(a["embedding"][key], b["embedding"][key], rtol=1e-3, atol=1e-4)


def test_the_profile_of_the_validation_pass_equals_one_of_its_own_on_a_bounded_sample(
    digits_data: Path, tmp_path: Path, monkeypatch
):
    def no_pass(*_args, **_kwargs):
        raise AssertionError("training made a profile pass of its own")

    monkeypatch.setattr(profile_module, "_run_all", no_pass)
    run = _train(digits_data, tmp_path / "runs", "monitor.profile_images=50")
    monkeypatch.undo()
    recorded = read_profile(run)
    assert recorded["images"] == 50  # of the 360 validation images: the bound holds

    # the same package, its profile made by a pass of its own: the same 50 images, the same figures
    package = tmp_path / "copy"
    shutil.copytree(run / "model", package)
    (package / PROFILE).unlink()
    fresh = write_profile(package, MonitorSection(profile_images=50))
    _assert_same_profile(recorded, fresh)
    assert recorded["embedding"] is not None and recorded["accuracy"] > 0.3


def test_the_sample_is_the_same_every_time_and_bounded():
    first, again = sample_indices(360, 50), sample_indices(360, 50)
    assert np.array_equal(first, again) and len(first) == 50 and len(set(first.tolist())) == 50
    assert np.all(np.diff(first) > 0)  # in the validation set's order
    assert np.array_equal(sample_indices(40, 50), np.arange(40))


@pytest.mark.parametrize("setting", ["train.precision=bf16", "train.ema=true"], ids=["bf16", "ema"])
def test_a_pass_of_its_own_only_where_validation_did_not_see_what_the_package_holds(
    digits_data: Path, tmp_path: Path, monkeypatch, setting: str
):
    calls = []
    real = profile_module._run_all
    monkeypatch.setattr(profile_module, "_run_all", lambda *a, **k: calls.append(1) or real(*a, **k))
    run = _train(digits_data, tmp_path / "runs", "monitor.profile_images=50", setting)
    assert read_profile(run)["images"] == 50
    # bf16 logits are not the package's fp32 ones: a pass of its own; EMA validates the EMA model,
    # which is what the package holds, so the validation pass serves
    assert len(calls) == (1 if "bf16" in setting else 0)
