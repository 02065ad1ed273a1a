"""The multi-process training tests' set-up (tests/engine/test_distributed.py and
test_multinode.py): a small prepared data folder and the module's model file."""

from __future__ import annotations

import pytest

from helpers import make_image_folder


@pytest.fixture(scope="module")
def setup(request, tmp_path_factory) -> dict:
    """``{"root", "model"}``: a folder holding ``data`` (3 classes, 27 training and 6 validation
    images) and ``model.py``, the requesting module's ``MODEL`` source, named by ``model`` as
    ``model.name`` takes it. Runs go to ``root/"runs"``."""
    from modelcycle.data.prepare import prepare

    root = tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))
    prepare(make_image_folder(root / "images", classes=3, per_class=11), root / "data", val=0.2, seed=0)
    (root / "model.py").write_text(request.module.MODEL)
    return {"root": root, "model": f"{root / 'model.py'}:build"}
