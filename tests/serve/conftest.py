"""A small trained classifier and a server over it, shared by the serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest

import modelcycle
from helpers import make_image_folder, tiny_overrides
from modelcycle.serve.process import ServerProcess


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A 3-class model trained on generated 16 px images; its images are under ../images."""
    root = tmp_path_factory.mktemp("serve")
    modelcycle.prepare(make_image_folder(root / "images"), root / "data", val=0.2, seed=0)
    overrides = tiny_overrides(root / "data", root / "runs", name="shapes", train__epochs=4)
    return modelcycle.train(modelcycle.load_config(None, overrides), progress=False).path


@pytest.fixture(scope="session")
def images(trained: Path) -> list[Path]:
    return sorted((trained.parents[1] / "images").glob("class_*/*.png"))


@pytest.fixture(scope="session")
def server(trained: Path):
    """One server for the read-only tests: batching on, a short batch delay."""
    with ServerProcess([trained], "serve.max_batch_delay_ms=20", "serve.max_images=8") as process:
        yield process
