"""Shared, module-scoped pieces of the language-model tests: the pydocs data, a small tokenizer
trained on it, a pretraining run and an SFT run from it, all at a size that trains in seconds on
two cores (a 2-layer, width-64 Llama; the real recipes use the `tiny` preset); and the random
tiny chat model of ``tiny_lm.py`` as a run folder and as a plain Hugging Face folder, for the
generation, chat and serving tests; the stand-ins of the models users bring (``stand_ins.py``: a
Qwen2 base and a bf16 Qwen2 instruct, a Llama with Llama-3's template) as downloaded folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from lm_setup import lm_overrides, sft_overrides, write_jsonl
from stand_ins import STANDINS, write_standin
from tiny_lm import write_run

import modelcycle
from helpers import one_torch_thread
from modelcycle.config import load_config
from modelcycle.data.pydocs import write_pydocs
from modelcycle.lm.tokenizer import train_tokenizer


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="session")
def pydocs(tmp_path_factory) -> Path:
    """The real pydocs files, plus small slices (``small-*``) the test runs train on."""
    root = tmp_path_factory.mktemp("pydocs")
    write_pydocs(root)
    documents = (root / "corpus.txt").read_text().split("\n\n")
    (root / "small-corpus.txt").write_text("\n\n".join(documents[:25]))
    for split, count in (("train", 160), ("val", 24)):  # first sentences: answers the small model can finish
        rows = [json.loads(line) for line in (root / f"sft-{split}.jsonl").read_text().splitlines()[:count]]
        for row in rows:
            row["messages"][1]["content"] = row["messages"][1]["content"].split(". ")[0].rstrip(".") + "."
        write_jsonl(root / f"small-sft-{split}.jsonl", rows)
    return root


@pytest.fixture(scope="session")
def tokenizer_dir(pydocs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer([pydocs / "corpus.txt"], 2000, out)
    return out


@pytest.fixture(scope="session")
def pretrained(pydocs, tokenizer_dir, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("lm-runs")
    samples = ["lm.sample_every=20", "lm.sample_prompts=[The for statement]", "lm.sample_tokens=8"]
    config = load_config(None, lm_overrides(pydocs, tokenizer_dir, runs, "pretrain", *samples))
    return modelcycle.train(config, progress=False).path


@pytest.fixture(scope="session")
def fine_tuned(pydocs, pretrained, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("sft-runs")
    config = load_config(None, sft_overrides(pydocs, pretrained, runs, "sft"))
    return modelcycle.train(config, progress=False).path


@pytest.fixture(scope="session")
def other_tokenizer(pydocs, tmp_path_factory) -> Path:
    """A tokenizer with more tokens than the runs' models embed."""
    out = tmp_path_factory.mktemp("tok-big")
    train_tokenizer([pydocs / "corpus.txt"], 2400, out)
    return out


@pytest.fixture(scope="session")
def tiny_lm_run(tmp_path_factory) -> Path:
    """``runs/tiny-chat/`` whose ``model/`` is an LM package (served as ``tiny-chat``)."""
    return write_run(tmp_path_factory.mktemp("lm") / "runs" / "tiny-chat")


@pytest.fixture(scope="session")
def plain_hf_folder(tmp_path_factory, tiny_lm_run) -> Path:
    """The same model as a user's downloaded folder: no modelcycle.json."""
    folder = tmp_path_factory.mktemp("hf") / "my-llama"
    shutil.copytree(tiny_lm_run / "model", folder)
    (folder / "modelcycle.json").unlink()
    return folder


@pytest.fixture(scope="session")
def standins(tmp_path_factory) -> dict[str, Path]:
    """Each stand-in of ``stand_ins.STANDINS`` as a downloaded Hugging Face folder, by name; tests
    read them and never write into them."""
    root = tmp_path_factory.mktemp("standins")
    return {name: write_standin(name, root / name) for name in STANDINS}
