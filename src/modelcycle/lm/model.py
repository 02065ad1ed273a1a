"""Causal language models in the Hugging Face format: Llama-style models built from a size
preset, LoRA targets, and writing packages with the LoRA adapter kept beside the merged weights
(opening any model folder is ``load.py``'s).

An LM package is a folder ``AutoModelForCausalLM`` and ``AutoTokenizer`` load as they are
(``config.json``, ``model.safetensors``, ``generation_config.json``, tokenizer files) plus our
``modelcycle.json``. A LoRA run's package holds the merged weights, so every command and
``transformers`` use it without peft, and the adapter alone in ``adapter/`` (peft's format),
which ``modelcycle lm merge`` folds into any copy of the base.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from modelcycle.errors import ConfigError
from modelcycle.lm.tokenizer import ENDOFTEXT
from modelcycle.models.hf import adapter_base
from modelcycle.models.hub import cached_repo
from modelcycle.models.text import package_writer as text_package_writer
from modelcycle.models.text import quiet
from modelcycle.packages import ADAPTER as PACKAGE_ADAPTER
from modelcycle.packages import open_package

# Llama-style shapes; parameters for a 4,000-token vocabulary with tied embeddings
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4, "num_attention_heads": 4},  # 1.3 M
    "small": {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 6, "num_attention_heads": 8},  # 5.8 M
    "base": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 8},  # 27 M
    "medium": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12},
}
ADAPTER = "adapter"  # the LoRA adapter's folder inside a package


def build_lm(size: str, tokenizer, context_length: int, args: dict) -> tuple[nn.Module, dict]:
    """A Llama-style model from the preset ``size`` (``args`` override any LlamaConfig key),
    vocabulary and special tokens from ``tokenizer``; call under a seeded RNG."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    shape = {**PRESETS[size], **args}
    shape.setdefault("num_key_value_heads", shape["num_attention_heads"])  # plain multi-head attention
    known = LlamaConfig().to_dict()
    for key in args:
        if key not in known:
            raise ConfigError(f"model.args.{key}: not a LlamaConfig key (e.g. num_hidden_layers, hidden_size)")
    separator = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=context_length,
        tie_word_embeddings=True,  # the embedding is most of a small model's parameters
        bos_token_id=separator,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    with quiet():
        model = LlamaForCausalLM(config).float()
    model.generation_config = GenerationConfig(
        bos_token_id=separator,
        eos_token_id=[tokenizer.eos_token_id, separator],  # end of turn, end of document
        pad_token_id=tokenizer.pad_token_id,
    )
    return model, {"preset": size, "config": shape}


def lora_targets(model: nn.Module, given: list[str] | None) -> list[str]:
    """The modules LoRA adapts: those given, else the attention query and value projections
    (q_proj/v_proj in Llama, Qwen and Mistral; c_attn in GPT-2)."""
    if given:
        return given
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for pair in (["q_proj", "v_proj"], ["query", "value"], ["c_attn"]):
        if set(pair) <= names:
            return pair
    raise ConfigError(f"set model.lora.target_modules (this model's Linear layers: {', '.join(sorted(names))})")


def package_writer(
    model: nn.Module, tokenizer, base: Path | None, dtype: torch.dtype | None = None
) -> Callable[[Path, dict, dict], Path]:
    """``write(out, weights, manifest)``: the merged model as a Hugging Face folder (the text
    package's writer: tied weights once, tokenizer files copied) with its generation_config.json,
    each tensor in the dtype it has in ``base`` (the folder the weights started from; a bare
    adapter's base model) unless ``dtype`` says otherwise; with LoRA the adapter alone in
    ``adapter/``, its config naming ``base`` (by its Hub id when it came from the cache)."""

    def also(folder: Path, plain: nn.Module, weights: dict) -> None:
        plain.generation_config.save_pretrained(folder)
        if hasattr(model, "peft_config"):
            adapter = _copy_with(model, weights)
            # a folder while saving: peft looks a base that is not one up on the Hub
            adapter.peft_config["default"].base_model_name_or_path = str(base.resolve()) if base else None
            adapter.save_pretrained(folder / ADAPTER)
            if base is not None and (repo := cached_repo(base)):
                _name_base(folder / ADAPTER / "adapter_config.json", repo, base.resolve().name)

    return text_package_writer(model, tokenizer, also, weights_source(base), dtype)


def weights_source(base: Path | None) -> Path | None:
    """The folder holding the full weights a run started from: ``base``, or a bare adapter's base."""
    if base is None:
        return None
    package = open_package(base)
    return adapter_base(package.folder) if package.kind == PACKAGE_ADAPTER else package.folder


def _name_base(config: Path, repo: str, commit: str) -> None:
    """The adapter's base named by its Hub id, which peft, transformers and modelcycle resolve, and
    the commit it was trained on (peft's ``revision``), so a later download of the id is not taken
    for it."""
    record = json.loads(config.read_text())
    record["base_model_name_or_path"], record["revision"] = repo, commit
    config.write_text(json.dumps(record, indent=2, sort_keys=True))  # as peft writes it


def _copy_with(model: nn.Module, weights: dict) -> nn.Module:
    import copy

    clone = copy.deepcopy(model)
    clone.load_state_dict(weights)
    return clone
