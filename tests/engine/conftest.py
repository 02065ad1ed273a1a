"""The engine tests' set-up: the stub task (stub_task.py) the engine's own tests train on, and for
the multi-process training tests (test_distributed.py, test_multinode.py) a small prepared image
folder and the module's model file."""

from __future__ import annotations

from pathlib import Path

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


# ---------------------------------------------------------------- the stub task (stub_task.py)


@pytest.fixture(scope="session")
def stub_plugin():
    """The stub regression task registered in this process, as ``run.task=stub_regression``."""
    import stub_task

    import modelcycle

    return modelcycle.register_task(stub_task.PLUGIN, replace=True)


@pytest.fixture
def stub_data(tmp_path: Path) -> Path:
    """30 training rows (4 steps of 8, the last of 6) and 16 validation rows."""
    from stub_task import write_data

    return write_data(tmp_path / "rows", train=30, val=16)


@pytest.fixture(scope="session")
def stub_rows(tmp_path_factory) -> Path:
    """240 training rows (30 steps of 8) and 64 validation rows, for the runs in other processes
    (stub_runs.py). Read-only: shared by the module's tests."""
    from stub_task import write_data

    return write_data(tmp_path_factory.mktemp("stub") / "rows")


@pytest.fixture
def stub_config(tmp_path: Path, stub_data: Path, stub_plugin):
    """A factory: ``stub_config(train__epochs=3)`` -> a validated Config of the stub task over
    ``stub_data`` (no dropout, 4 steps an epoch) with ``run.dir`` = tmp_path/"runs" and
    ``run.name`` = ``name``. ``extra`` uses ``__`` for the dot, as ``tiny_config`` does."""
    from modelcycle.config import load_config

    def make(*more: str, name: str = "tiny", **extra):
        values = {
            "run.task": "stub_regression",
            "data.root": str(stub_data),
            "model.args": "{width: 16, dropout: 0.0}",
            "train.epochs": 2,
            "train.batch_size": 8,
            "train.lr": 0.01,
            "train.device": "cpu",
            "train.log_every": 2,
            "eval.batch_size": 64,
            "run.dir": str(tmp_path / "runs"),
            "run.name": name,
        }
        values.update({k.replace("__", "."): v for k, v in extra.items()})
        return load_config(None, [f"{k}={v}" for k, v in values.items()] + list(more))

    return make
