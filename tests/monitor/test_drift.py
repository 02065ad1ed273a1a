"""The drift tests on numbers whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from modelcycle.monitor.drift import Thresholds, bin_edges, class_mix, psi, score_window, shares

LIMITS = Thresholds()


def test_psi_is_zero_for_the_same_mix_and_matches_the_textbook_formula():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    # (0.7 - 0.5) ln(0.7 / 0.5) + (0.3 - 0.5) ln(0.3 / 0.5)
    assert psi([0.5, 0.5], [0.7, 0.3]) == pytest.approx(0.2 * np.log(1.4) - 0.2 * np.log(0.6))


def test_decile_bins_hold_a_tenth_of_the_reference_each():
    reference = np.random.default_rng(0).normal(size=10_000)
    edges = bin_edges(reference)
    assert len(edges) == 9
    assert shares(reference, edges) == pytest.approx(np.full(10, 0.1), abs=1e-3)


def test_class_mix_accepts_the_reference_mix_and_rejects_a_skewed_one():
    rng = np.random.default_rng(0)
    _, p_same = class_mix([0.25] * 4, rng.integers(0, 4, 400))
    _, p_skewed = class_mix([0.25] * 4, np.r_[np.zeros(300, int), rng.integers(0, 4, 100)])
    assert p_same > 0.01 and p_skewed < 1e-10


def _profile(rng: np.random.Generator) -> dict:
    """Two numerical features, both standard normal in the reference; two classes half and half."""
    features = {}
    for name in ("brightness", "confidence"):
        values = rng.normal(size=2000)
        edges = bin_edges(values)
        features[name] = {"mean": 0.0, "edges": edges.tolist(), "shares": shares(values, edges).tolist()}
        features[name]["sample"] = values
    return {"features": features, "class_shares": [0.5, 0.5], "ood": {"threshold": -10, "quantile": 0.05}}


def test_a_window_names_the_feature_that_moved_and_only_that_one():
    rng = np.random.default_rng(0)
    profile = _profile(rng)
    window = {"brightness": rng.normal(size=300), "confidence": rng.normal(size=300), "label": rng.integers(0, 2, 300)}
    calm = score_window(profile, window, Thresholds())
    assert calm["verdict"] != "drift", calm
    moved = score_window(profile, {**window, "brightness": window["brightness"] + 1.0}, Thresholds())
    assert moved["drifted"] == ["brightness"], moved
    assert moved["features"]["brightness"]["psi"] > 0.2 and moved["features"]["brightness"]["ks_p"] < 1e-6
    assert score_window(profile, window, Thresholds(psi_warn=1e-6, psi_alert=1e-5))["verdict"] == "drift"


def test_a_reference_of_one_size_flags_smaller_and_larger_images_alike():
    """Every reference image 500 px: thumbnails must not share the 500 px bin (-inf, 500]."""
    reference = np.full(1000, 500.0)
    edges = bin_edges(reference)
    expected = shares(reference, edges)
    assert psi(expected, shares(np.full(200, 500.0), edges)) == 0
    assert psi(expected, shares(np.full(200, 120.0), edges)) > 0.2  # thumbnails
    assert psi(expected, shares(np.full(200, 2000.0), edges)) > 0.2  # 4K photos
    # continuous values have no value that repeats: the deciles alone, as before
    assert len(bin_edges(np.random.default_rng(0).normal(size=1000))) == 9


def test_missing_values_are_left_out_and_too_few_are_not_measured():
    """NaN is what the log gives for an image sent as a tensor (no size) or a row an older log wrote."""
    rng = np.random.default_rng(0)
    profile = _profile(rng)
    labels = rng.integers(0, 2, 300)
    half_missing = np.r_[rng.normal(size=150), np.full(150, np.nan)]
    result = score_window(
        profile, {"brightness": half_missing, "confidence": rng.normal(size=300), "label": labels}, LIMITS
    )
    brightness = result["features"]["brightness"]
    assert brightness["values"] == 150 and brightness["drift"] != "drift" and np.isfinite(brightness["psi"])
    moved = score_window(
        profile, {"brightness": half_missing + 1.0, "confidence": rng.normal(size=300), "label": labels}, LIMITS
    )
    assert moved["drifted"] == ["brightness"]  # the values it has still count

    few = np.r_[rng.normal(size=10) + 5.0, np.full(290, np.nan)]  # 10 values far off: noise, not a verdict
    result = score_window(profile, {"brightness": few, "confidence": rng.normal(size=300), "label": labels}, LIMITS)
    assert result["features"]["brightness"] == {
        "values": 10,
        "reference_mean": 0.0,
        "drift": "unmeasured",
        "reason": "10 values < 50: too few to test",
    }
    assert "brightness" not in result["drifted"] + result["warned"] and result["verdict"] != "drift"
    none = score_window(
        profile, {"brightness": np.full(300, np.nan), "confidence": rng.normal(size=300), "label": labels}, LIMITS
    )
    assert none["features"]["brightness"]["drift"] == "unmeasured"
    # a window smaller than MIN_VALUES is measured when every row has the feature
    small = score_window(
        profile,
        {"brightness": rng.normal(size=20) + 1.0, "confidence": rng.normal(size=20), "label": labels[:20]},
        LIMITS,
    )
    assert small["features"]["brightness"]["drift"] == "drift"
