"""Packages as faithful as the model they came from: a bf16 model stays bf16 on disk (or
lm.save_dtype), tied weights are stored once, the tokenizer's files are the source's byte for byte
plus only what changed, so a package is no larger than its source plus adapters and loads in
transformers with the same logits. A tokenizer from another model is refused, even at the same size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hub_models import forbid_network, safetensors_header, sft_overrides, tokenizers, write_chats, write_source

import modelcycle
from helpers import assert_mentions
from modelcycle.config import load_config
from modelcycle.errors import ConfigError, UserError
from modelcycle.lm.load import check_tokenizer, open_lm
from modelcycle.lm.merge import merge
from modelcycle.lm.model import package_writer
from modelcycle.tasks import registry

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
PROMPT = torch.tensor([[0, 5, 17, 42, 99, 7]])


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    forbid_network(monkeypatch)


@pytest.fixture(scope="module")
def pair():
    return tokenizers()


@pytest.fixture(scope="module")
def source(tmp_path_factory, pair) -> Path:
    """A bf16 Qwen2 with tied embeddings, as downloaded."""
    return write_source(tmp_path_factory.mktemp("bf16") / "tiny-qwen", pair[0])


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    return write_chats(tmp_path_factory.mktemp("chats") / "chats.jsonl")


def weights(folder: Path) -> Path:
    return folder / "model.safetensors"


def total_size(folder: Path, leave_out: tuple[str, ...] = ()) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name not in leave_out)


def logits(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)  # dtype "auto": as saved
    with torch.no_grad():
        return model(PROMPT).logits


def assert_like_source(package: Path, source: Path, dtype: str = "BF16") -> None:
    """Same tensors (no second lm_head), in ``dtype``, no larger; tokenizer files the source's."""
    header, original = safetensors_header(weights(package)), safetensors_header(weights(source))
    assert set(header) == set(original) and "lm_head.weight" not in header
    assert {entry["dtype"] for entry in header.values()} == {dtype}
    if dtype == "BF16":
        assert weights(package).stat().st_size == weights(source).stat().st_size
    for name in TOKENIZER_FILES:
        assert (package / name).read_bytes() == (source / name).read_bytes(), name


def test_a_bf16_tied_model_is_written_as_it_came(source, tmp_path):
    model, tokenizer, _ = open_lm(source)  # float32 in memory, as training holds it
    package = tmp_path / "package"
    package_writer(model, tokenizer, source)(package, model.state_dict(), {"task": "sft"})
    assert_like_source(package, source)
    assert json.loads((package / "config.json").read_text())["dtype"] == "bfloat16"
    assert total_size(package, ("modelcycle.json",)) <= total_size(source) + 64
    assert torch.equal(logits(package), logits(source))


def test_sft_packages_keep_the_source_dtype_or_save_dtype(source, chats, tmp_path):
    run = modelcycle.train(load_config(None, sft_overrides(str(source), tmp_path, chats, "full")), progress=False)
    assert_like_source(run.model_dir, source)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(run.model_dir).get_vocab() == AutoTokenizer.from_pretrained(source).get_vocab()
    assert logits(run.model_dir).dtype == torch.bfloat16

    wide = sft_overrides(str(source), tmp_path, chats, "float32", "lm.save_dtype=float32")
    run = modelcycle.train(load_config(None, wide), progress=False)
    assert_like_source(run.model_dir, source, "F32")
    assert json.loads((run.model_dir / "config.json").read_text())["dtype"] == "float32"


def test_lora_packages_and_their_merge_stay_bf16(source, chats, tmp_path):
    overrides = sft_overrides(str(source), tmp_path, chats, "lora", "lora.r=4")
    run = modelcycle.train(load_config(None, overrides), progress=False)
    assert_like_source(run.model_dir, source)
    adapter = total_size(run.model_dir / "adapter")
    assert total_size(run.model_dir, ("modelcycle.json",)) <= total_size(source) + adapter + 64
    merged = merge(run.model_dir / "adapter", tmp_path / "merged", "sft")
    assert_like_source(Path(merged["_dir"]), source)
    assert torch.allclose(logits(Path(merged["_dir"])), logits(run.model_dir), atol=1e-2)


def test_an_untied_float32_llama_keeps_its_head(pair, tmp_path):
    source = write_source(tmp_path / "llama", pair[0], arch="llama", dtype="float32", tied=False)
    model, tokenizer, _ = open_lm(source)
    package_writer(model, tokenizer, source)(tmp_path / "package", model.state_dict(), {"task": "sft"})
    header = safetensors_header(weights(tmp_path / "package"))
    assert "lm_head.weight" in header and {e["dtype"] for e in header.values()} == {"F32"}
    assert weights(tmp_path / "package").stat().st_size == weights(source).stat().st_size
    assert torch.equal(logits(tmp_path / "package"), logits(source))


def test_a_chat_template_given_in_memory_is_the_only_change(source, tmp_path):
    model, tokenizer, _ = open_lm(source)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
    package_writer(model, tokenizer, source)(tmp_path / "package", model.state_dict(), {"task": "sft"})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "package" / name).read_bytes() == (source / name).read_bytes()
    assert (tmp_path / "package" / "chat_template.jinja").read_text() == tokenizer.chat_template
    assert "local_files_only" not in (tmp_path / "package" / "tokenizer_config.json").read_text()
    _, reread, _ = open_lm(tmp_path / "package")
    assert reread.chat_template == tokenizer.chat_template


def test_a_tokenizer_of_another_model_is_refused_unless_allowed(source, pair, chats, tmp_path):
    other = tmp_path / "other-tokenizer"
    pair[1].save_pretrained(other)
    assert len(pair[1]) == len(pair[0]) and pair[1].all_special_ids == pair[0].all_special_ids
    overrides = sft_overrides(str(source), tmp_path, chats, "mismatch", f"lm.tokenizer={other}")
    with pytest.raises(ConfigError) as error:
        modelcycle.train(load_config(None, overrides), progress=False)
    assert_mentions(str(error.value), f"lm.tokenizer={other}", source, "lm.tokenizer_mismatch_ok=true")
    run = modelcycle.train(load_config(None, [*overrides, "lm.tokenizer_mismatch_ok=true"]), progress=False)
    assert (run.model_dir / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_config_special_ids_must_be_special_tokens(source, pair):
    model, own, _ = open_lm(source)
    check_tokenizer(model, own, own, source, source, allow=False)  # its own tokenizer passes
    model.config.eos_token_id = 42  # an ordinary token of the tokenizer
    with pytest.raises(ConfigError, match=r"eos_token_id=42 is '.*' there, not a special token"):
        check_tokenizer(model, own, None, source, "elsewhere", allow=False)
    check_tokenizer(model, own, None, source, "elsewhere", allow=True)


@pytest.mark.parametrize("task", ["dpo", "ppo"])
def test_preference_tasks_read_the_package_keys(task):
    config = load_config(None, [f"run.task={task}", "lm.save_dtype=bfloat16", "lm.tokenizer_mismatch_ok=true"])
    registry.check_reads(registry.apply_defaults(config))


def test_float16_that_would_overflow_is_refused(source, tmp_path):
    model, tokenizer, _ = open_lm(source)
    with torch.no_grad():
        model.model.norm.weight[0] = 1e6
    write = package_writer(model, tokenizer, source, torch.float16)
    with pytest.raises(UserError, match="model.norm.weight holds values float16 cannot represent"):
        write(tmp_path / "package", model.state_dict(), {"task": "sft"})
    assert not (tmp_path / "package").exists()
