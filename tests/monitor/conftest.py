"""A digits classifier trained for the monitoring tests, and its training images (monitor_images.py
shifts and encodes them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import modelcycle
from helpers import tiny_overrides
from modelcycle.data.manifest import PreparedData


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """simple_cnn (width 8) on the bundled digits at 16 px: ~94 % in a few seconds. Training
    writes the reference profile into its package (on the 360 validation images)."""
    root = tmp_path_factory.mktemp("monitor")
    modelcycle.write_digits(root / "raw")
    modelcycle.prepare(root / "raw", root / "data", val=0.2, seed=0)
    overrides = tiny_overrides(root / "data", root / "runs", name="digits", train__epochs=3, train__batch_size=32)
    return modelcycle.train(modelcycle.load_config(None, overrides), progress=False).path


@pytest.fixture(scope="session")
def train_images(digits_run: Path) -> list[np.ndarray]:
    """The training split's pictures (not the validation images the profile was computed on)."""
    items = PreparedData.open(digits_run.parents[1] / "data").split("train")
    order = np.random.default_rng(1).permutation(len(items))
    return [np.asarray(Image.open(items[i][0])) for i in order]
