"""The RLHF tests' config factory over ``prefs`` and ``sft_policy``, the session fixtures in
tests/conftest.py (builders in tests/lm_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lm_fixtures import MAX_LENGTH


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
