"""Models by Hub id, from the local Hugging Face cache and never the network: ``owner/name`` opens
the cached snapshot wherever a model folder is taken (open_package, load_lm, `modelcycle lm
generate`, model.name of a run, an adapter's base), and a model missing from the cache is an error
that says how to download it elsewhere. A fake cache in the real layout stands in for a download;
every test runs with sockets refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hub_models import COMMIT, add_to_cache, forbid_network, sft_overrides, tokenizers, write_chats, write_source
from typer.testing import CliRunner

import modelcycle
from helpers import assert_mentions
from modelcycle.cli import app
from modelcycle.config import load_config
from modelcycle.errors import UserError
from modelcycle.lm.load import load_lm, open_lm
from modelcycle.lm.merge import merge
from modelcycle.lm.sampling import Sampling
from modelcycle.packages import CAUSAL, open_package

REPO = "tiny-org/tiny-qwen"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    forbid_network(monkeypatch)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A bf16 Qwen2 with tied embeddings, as a download holds it."""
    return write_source(tmp_path_factory.mktemp("download") / "tiny-qwen", tokenizers()[0])


@pytest.fixture
def cache(tmp_path, source, monkeypatch) -> Path:
    """A Hugging Face cache holding REPO, pointed at by HF_HUB_CACHE; the test runs in tmp_path."""
    cache = tmp_path / "hf-cache"
    add_to_cache(cache, REPO, source)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    return cache


def test_a_hub_id_opens_its_cached_snapshot(cache):
    package = open_package(REPO)
    assert package.kind == CAUSAL and package.hub_id == REPO and package.name == REPO
    assert package.folder == cache / "models--tiny-org--tiny-qwen" / "snapshots" / COMMIT
    assert open_package(f"{REPO}@{COMMIT}").folder == package.folder  # a revision pins the commit
    lm = load_lm(REPO, device="cpu")
    assert lm.name == REPO
    answer = lm.generate([lm.chat_ids([{"role": "user", "content": "Hello"}])], Sampling(max_new_tokens=4))[0]
    assert len(answer.token_ids) >= 1


def test_hf_home_is_read_too(tmp_path, source, monkeypatch):
    add_to_cache(tmp_path / "home" / "hub", REPO, source)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert open_package(REPO).folder.parent.parent.name == "models--tiny-org--tiny-qwen"


def test_a_missing_hub_id_says_how_to_download_it(cache):
    with pytest.raises(UserError) as error:
        open_package("tiny-org/absent")
    assert_mentions(str(error.value), "never downloads", "hf download tiny-org/absent", cache, "HF_HUB_CACHE")
    with pytest.raises(UserError, match=f"hf download {REPO} --revision main2"):
        open_package(f"{REPO}@main2")


def test_a_partial_download_is_named(cache):
    snapshot = cache / "models--tiny-org--tiny-qwen" / "snapshots" / COMMIT
    (snapshot / "config.json").unlink()
    with pytest.raises(UserError, match=f"only part of the model was downloaded.*hf download {REPO}"):
        open_package(REPO)


def test_a_missing_run_path_is_still_a_path(cache):
    (cache.parent / "runs").mkdir()
    with pytest.raises(UserError, match="runs/nope does not exist and is neither a run folder") as error:
        open_package("runs/nope")
    assert "hf download" not in str(error.value)


def test_lm_generate_takes_a_hub_id(cache):
    result = CliRunner().invoke(app, ["lm", "generate", REPO, "Hello", "--temperature", "0", "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    assert "new tokens" in result.stderr
    missing = CliRunner().invoke(app, ["lm", "generate", "tiny-org/absent", "Hello"])
    assert isinstance(missing.exception, UserError)  # the CLI's entry point prints it as `error:`, exit 2
    assert_mentions(str(missing.exception), "hf download tiny-org/absent")


def test_evaluate_writes_a_hub_models_report_outside_the_cache(cache, tmp_path):
    chats = write_chats(tmp_path / "chats.jsonl", 6)
    result = modelcycle.evaluate(REPO, data=chats)
    assert Path(result["report"]).resolve() == (tmp_path / "reports" / "tiny-org--tiny-qwen" / "metrics.json")
    assert not (tmp_path / "tiny-org").exists()  # the id stays free to resolve next time
    assert open_package(REPO).hub_id == REPO


def test_sft_with_lora_from_a_hub_id_names_the_base_by_its_id(cache, tmp_path):
    chats = write_chats(tmp_path / "chats.jsonl")
    config = load_config(None, sft_overrides(REPO, tmp_path / "runs", chats, "hub-lora", "lora.r=4"))
    run = modelcycle.train(config, progress=False)
    manifest = json.loads((run.model_dir / "modelcycle.json").read_text())
    assert manifest["architecture"]["name"] == REPO
    adapter = run.model_dir / "adapter"
    settings = json.loads((adapter / "adapter_config.json").read_text())
    assert (settings["base_model_name_or_path"], settings["revision"]) == (REPO, COMMIT)
    # the bare adapter opens on any machine whose cache holds the base: merged in memory
    merged, _, _ = open_lm(adapter)
    trained, _, _ = open_lm(run.model_dir)
    for name, weight in trained.state_dict().items():
        assert (merged.state_dict()[name] - weight).abs().max() < 1e-2, name
    # an adapter downloaded on its own merges by its id: base and tokenizer from the cache
    add_to_cache(cache, "tiny-org/tiny-lora", adapter)
    record = merge("tiny-org/tiny-lora", tmp_path / "merged", "sft")
    base_tokenizer = (open_package(REPO).folder / "tokenizer.json").read_bytes()
    assert (Path(record["_dir"]) / "tokenizer.json").read_bytes() == base_tokenizer
    assert record["end_of_turn"]["token"] == "<|im_end|>"  # a bare adapter records its template's turn end
    # the base is pinned to the commit it was trained on, not to whatever main becomes
    (cache / "models--tiny-org--tiny-qwen" / "refs" / "main").write_text("f" * 40)
    with pytest.raises(UserError, match="holds no snapshot"):
        open_package(REPO)
    assert open_lm(adapter)[0] is not None


def test_lm_tokenizer_takes_a_hub_id(cache, tmp_path):
    chats = write_chats(tmp_path / "chats.jsonl")
    snapshot = open_package(REPO).folder
    more = (f"lm.tokenizer={REPO}", "train.epochs=1")
    config = load_config(None, sft_overrides(str(snapshot), tmp_path / "runs", chats, "own-tokenizer", *more))
    run = modelcycle.train(config, progress=False)
    assert (run.model_dir / "tokenizer.json").read_bytes() == (snapshot / "tokenizer.json").read_bytes()


def test_a_text_classifier_takes_a_hub_id(tmp_path, monkeypatch):
    from modelcycle.models.text import resolve_folder

    shipped = resolve_folder("all-MiniLM-L6-v2")
    snapshot = add_to_cache(tmp_path / "cache", "sentence-transformers/all-MiniLM-L6-v2", shipped)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert resolve_folder("sentence-transformers/all-MiniLM-L6-v2") == snapshot
