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
def digits_run(tmp_path_factory, digits_data: Path) -> Path:
    """simple_cnn (width 8) on the bundled digits (tests/conftest.py) at 16 px: ~94 % in a few
    seconds. Training writes the reference profile into its package (on the 360 validation
    images). The data folder is linked beside the run, as ../../data."""
    root = tmp_path_factory.mktemp("monitor")
    (root / "data").symlink_to(digits_data, target_is_directory=True)
    overrides = tiny_overrides(root / "data", root / "runs", name="digits", train__epochs=3, train__batch_size=32)
    return modelcycle.train(modelcycle.load_config(None, overrides), progress=False).path


@pytest.fixture(scope="session")
def train_images(digits_run: Path) -> list[np.ndarray]:
    """The training split's pictures (not the validation images the profile was computed on)."""
    items = PreparedData.open(digits_run.parents[1] / "data").split("train")
    order = np.random.default_rng(1).permutation(len(items))
    return [np.asarray(Image.open(items[i][0])) for i in order]
