"""Fixtures of the language-model tests: the tiny chat model of ``tiny_lm.py`` as a run folder
and as a plain Hugging Face folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tiny_lm import build_model, build_tokenizer, write_lm_package


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's matrices are too small to share between threads: one thread is faster,
    and much faster on a busy 2-core machine (child processes get OMP_NUM_THREADS=1 likewise)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_lm_run(tmp_path_factory) -> Path:
    """``runs/tiny-chat/`` whose ``model/`` is an LM package (served as ``tiny-chat``)."""
    run = tmp_path_factory.mktemp("lm") / "runs" / "tiny-chat"
    tokenizer = build_tokenizer()
    write_lm_package(run / "model", build_model(tokenizer), tokenizer)
    (run / "config.yaml").write_text("run:\n  name: tiny-chat\n")
    return run


@pytest.fixture(scope="session")
def plain_hf_folder(tmp_path_factory, tiny_lm_run) -> Path:
    """The same model as a user's downloaded folder: no modelcycle.json."""
    folder = tmp_path_factory.mktemp("hf") / "my-llama"
    shutil.copytree(tiny_lm_run / "model", folder)
    (folder / "modelcycle.json").unlink()
    return folder
