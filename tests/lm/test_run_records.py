"""Honest run records for the models users bring: a Qwen2 fine-tuned by SFT is recorded as a
qwen2 (``model_type`` and ``architectures`` as its package's config.json says), by its Hub id and
commit, and config.yaml does not claim the Llama that SFT builds by default; a Llama built from
scratch on a Hub tokenizer records the tokenizer's id, not a path of this machine's cache; and
``modelcycle serve`` serves a Hub id under that id. Sockets are refused throughout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hub_models import COMMIT, SHAPE, add_to_cache, forbid_network, sft_overrides, tokenizers, write_chats, write_source

import modelcycle
from modelcycle.config import load_config
from modelcycle.errors import ConfigError
from modelcycle.tasks.registry import task_view
from modelcycle.track.listing import list_runs

REPO = "tiny-org/tiny-qwen"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    forbid_network(monkeypatch)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A Hugging Face cache holding REPO (a bf16 Qwen2 with tied embeddings)."""
    root = tmp_path_factory.mktemp("records")
    add_to_cache(root / "hf-cache", REPO, write_source(root / "tiny-qwen", tokenizers()[0]))
    return root / "hf-cache"


@pytest.fixture
def hub(cache, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def qwen_sft(hub) -> Path:
    """An SFT run of REPO named by model.init_from, the way SFT is started from an earlier model."""
    overrides = sft_overrides(REPO, hub / "runs", write_chats(hub / "chats.jsonl"), "qwen-sft")
    overrides = [o.replace("model.name=", "model.init_from=") for o in overrides]
    return modelcycle.train(load_config(None, overrides), progress=False).path


def test_a_qwen_fine_tune_records_qwen2_not_llama(qwen_sft: Path):
    manifest = json.loads((qwen_sft / "model" / "modelcycle.json").read_text())
    arch = manifest["architecture"]
    assert (arch["model_type"], arch["architectures"]) == ("qwen2", ["Qwen2ForCausalLM"])
    assert (arch["name"], arch["revision"]) == (REPO, COMMIT)
    package_config = json.loads((qwen_sft / "model" / "config.json").read_text())
    assert (package_config["model_type"], package_config["architectures"]) == ("qwen2", arch["architectures"])
    saved = yaml.safe_load((qwen_sft / "config.yaml").read_text())
    assert saved["model"]["name"] is None and saved["model"]["init_from"] == REPO  # no model.name: llama
    status = json.loads((qwen_sft / "status.json").read_text())
    assert status["model"] == {
        "name": REPO,
        "revision": COMMIT,
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "parameters": arch["parameters"],
    }
    (summary,) = list_runs(qwen_sft.parent, judge=task_view).runs
    assert (summary.model, summary.group) == ("qwen2", "sft")


def test_model_name_llama_and_init_from_together_are_refused(hub):
    overrides = sft_overrides(REPO, hub / "runs", write_chats(hub / "chats.jsonl"), "both")
    overrides = [o.replace("model.name=", "model.init_from=") for o in overrides]
    with pytest.raises(ConfigError, match="model.name=llama and model.init_from=tiny-org/tiny-qwen: .*set one"):
        modelcycle.train(load_config(None, [*overrides, "model.name=llama"]), progress=False)


def test_a_llama_from_scratch_records_its_hub_tokenizer_by_id(hub):
    shape = "{" + ", ".join(f"{k}: {v}" for k, v in SHAPE.items()) + "}"
    more = ("model.name=llama", f"model.args={shape}", f"lm.tokenizer={REPO}")
    overrides = sft_overrides("unused", hub / "runs", write_chats(hub / "chats.jsonl"), "scratch")
    overrides = [o for o in overrides if not o.startswith("model.name=")] + list(more)
    run = modelcycle.train(load_config(None, overrides), progress=False)
    arch = json.loads((run.model_dir / "modelcycle.json").read_text())["architecture"]
    assert (arch["tokenizer"], arch["tokenizer_revision"]) == (REPO, COMMIT)  # no path of this machine's cache
    assert (arch["name"], arch["model_type"], arch["architectures"]) == ("llama", "llama", ["LlamaForCausalLM"])


def test_a_hub_id_is_served_under_its_id(hub):
    from starlette.testclient import TestClient

    from modelcycle.config import ServeSection
    from modelcycle.serve.app import build_app
    from modelcycle.serve.models import model_name
    from modelcycle.serve.server import load_state

    assert model_name(Path(REPO)) == REPO and model_name(Path(f"{REPO}@{COMMIT}")) == REPO
    (hub / "runs" / "flowers" / "model").mkdir(parents=True)
    assert model_name(Path("runs/flowers/model")) == "flowers"
    state, protocols = load_state([REPO], ServeSection())
    with TestClient(build_app(state, protocols)) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [REPO]
        assert client.get(f"/v1/models/{REPO}").json()["id"] == REPO
        body = {"model": REPO, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        answer = client.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200 and answer.json()["model"] == REPO
