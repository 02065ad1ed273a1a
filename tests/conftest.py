"""Shared fixtures: tiny, learnable image folders generated with Pillow, a prepared data folder
and a small config factory, so every test runs in seconds on two CPU cores."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# One torch thread, in this process and (torch reads OMP_NUM_THREADS at import) in every command
# the tests start, unless the caller chose otherwise. The models are tiny and the two cores are
# shared with the processes a test starts (and with whatever else runs): a second OpenMP thread
# mostly spins against them. A reward model's epoch took 2 s on one thread, 21 s on two.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from helpers import LINEAR_MODEL, make_image_folder, tiny_overrides  # noqa: E402
from lm_fixtures import MAX_LENGTH, build_sft_policy, write_prefs  # noqa: E402


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """3 classes x 12 RGB PNGs of 16x16 (class = position and colour of a bright square)."""
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def prepared(tmp_path: Path, image_folder: Path) -> Path:
    """``image_folder`` after ``prepare`` with a 20 % validation split (30 train, 6 val images)."""
    from modelcycle.data.prepare import prepare

    out = tmp_path / "data"
    prepare(image_folder, out, val=0.2, seed=0)
    return out


@pytest.fixture
def tiny_config(tmp_path: Path, prepared: Path):
    """A factory: ``tiny_config(train__epochs=3)`` -> a validated Config over ``prepared`` with
    ``run.dir`` = tmp_path/"runs"."""
    from modelcycle.config import load_config

    def make(*more: str, **extra):
        return load_config(None, tiny_overrides(prepared, tmp_path / "runs", **extra) + list(more))

    return make


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    """``image_folder``'s images (under ../images) prepared as ``prepared`` is (30 train, 6 val),
    once a session. Read-only: shared by ``trained`` and the tracking tests."""
    from modelcycle.data.prepare import prepare

    root = tmp_path_factory.mktemp("shapes")
    prepare(make_image_folder(root / "images"), root / "data", val=0.2, seed=0)
    return root / "data"


@pytest.fixture(scope="session")
def trained(shapes_data: Path) -> Path:
    """The suite's one small trained image classifier: simple_cnn (width 8) for 4 epochs on
    ``shapes_data``, so its images are under ../images and its data under ../data. EMA is on and a
    checkpoint is written every 2 steps, so that pruning fine-tunes on a recipe with both.

    Read-only: the serving tests and tests/hostile share it as it is. A module that writes into
    the run (an export, a report, a fine-tune's source record) overrides ``trained`` with its own
    ``copy_run(trained, tmp_path_factory.mktemp(...))``. tests/evaluation/test_evaluate.py trains
    its own: it needs a test split and 12 validation images."""
    import modelcycle

    overrides = tiny_overrides(
        shapes_data, shapes_data.parent / "runs", name="shapes", train__epochs=4, train__ema="true",
        train__checkpoint_every=2,
    )  # fmt: skip
    return modelcycle.train(modelcycle.load_config(None, overrides), progress=False).path


@pytest.fixture(scope="session")
def images(trained: Path) -> list[Path]:
    return sorted((trained.parents[1] / "images").glob("class_*/*.png"))


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory) -> Path:
    """The bundled digits (1,797 pictures of 10 classes, written as PNGs under ../raw) prepared
    with a 20 % validation split. Read-only: shared by the monitoring tests."""
    import modelcycle

    root = tmp_path_factory.mktemp("digits")
    modelcycle.write_digits(root / "raw")
    modelcycle.prepare(root / "raw", root / "data", val=0.2, seed=0)
    return root / "data"


# ---------------------------------------------------------------- preference tuning (builders in lm_fixtures.py)


@pytest.fixture(scope="session")
def prefs(tmp_path_factory) -> Path:
    """pydocs preference pairs (prefs-train.jsonl, prefs-val.jsonl). This and the two below are
    shared by the RLHF tests and tests/hostile/test_run_lock_ppo.py."""
    return write_prefs(tmp_path_factory.mktemp("pydocs"))


@pytest.fixture(scope="session")
def sft_policy(tmp_path_factory, prefs: Path) -> Path:
    """A tiny SFT policy package (4 epochs over ``prefs``' chosen answers)."""
    return build_sft_policy(tmp_path_factory.mktemp("lm-sft") / "model", prefs)


@pytest.fixture(scope="session")
def reward_run(tmp_path_factory, prefs, sft_policy):
    """A reward model trained from ``sft_policy`` on ``prefs`` (5 epochs): the Run."""
    from modelcycle import api
    from modelcycle.config import load_config

    config = load_config(
        None,
        [
            "run.task=reward",
            "run.name=reward",
            f"run.dir={tmp_path_factory.mktemp('runs')}",
            f"model.init_from={sft_policy}",
            f"data.root={prefs}",
            f"lm.context_length={MAX_LENGTH}",
            "train.epochs=5",
            "train.batch_size=16",
            "train.lr=3e-3",
            "train.schedule=none",
        ],
    )
    return api.train(config, progress=False)


@pytest.fixture
def linear_model_file(tmp_path: Path) -> str:
    """A user model file with no BatchNorm, as ``model.name`` = ``path/to/file.py:build``."""
    path = tmp_path / "linear_model.py"
    path.write_text(LINEAR_MODEL)
    return f"{path}:build"


@pytest.fixture
def lm_config(tmp_path: Path, prefs: Path, sft_policy: Path):
    """A factory for the preference tasks' tests: ``lm_config("reward", "train.epochs=3")`` -> a
    Config over ``prefs`` and ``sft_policy``."""
    from modelcycle.config import load_config

    def make(task: str, *more: str):
        base = [
            f"run.task={task}",
            f"run.name={task}",
            f"run.dir={tmp_path / 'runs'}",
            f"model.init_from={sft_policy}",
            f"data.root={prefs}",
            f"lm.context_length={MAX_LENGTH}",
            "train.batch_size=16",
            "train.schedule=none",
            "train.log_every=5",
            "eval.batch_size=32",
        ]
        return load_config(None, base + list(more))

    return make
