"""Session fixtures for the RLHF tests (builders in tests/lm_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lm_fixtures import MAX_LENGTH, build_sft_policy, write_prefs


@pytest.fixture(scope="session")
def prefs(tmp_path_factory) -> Path:
    return write_prefs(tmp_path_factory.mktemp("pydocs"))


@pytest.fixture(scope="session")
def sft_policy(tmp_path_factory, prefs: Path) -> Path:
    return build_sft_policy(tmp_path_factory.mktemp("lm-sft") / "model", prefs)


@pytest.fixture(scope="session")
def reward_run(tmp_path_factory, prefs, sft_policy):
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
def lm_config(tmp_path: Path, prefs: Path, sft_policy: Path):
    """A factory: ``lm_config("reward", "train.epochs=3")`` -> a Config over the fixtures."""
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
