"""Causal language models in the Hugging Face format: Llama-style models built from a size
preset, or any local model folder (ours, or a downloaded Qwen or Llama); loading and writing
packages; LoRA adapters kept beside the merged weights.

An LM package is a folder ``AutoModelForCausalLM`` and ``AutoTokenizer`` load as they are
(``config.json``, ``model.safetensors``, ``generation_config.json``, tokenizer files) plus our
``modelcycle.json``. A LoRA run's package holds the merged weights, so every command and
``transformers`` use it without peft, and the adapter alone in ``adapter/`` (peft's format),
which ``modelcycle lm merge`` folds into any copy of the base.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from modelcycle import runs
from modelcycle.errors import ConfigError, UserError
from modelcycle.lm.tokenizer import ENDOFTEXT, eos_ids
from modelcycle.models.text import plain_model, quiet

# Llama-style shapes; parameters for a 4,000-token vocabulary with tied embeddings
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4, "num_attention_heads": 4},  # 1.3 M
    "small": {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 6, "num_attention_heads": 8},  # 5.8 M
    "base": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 8},  # 27 M
    "medium": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12},
}
ADAPTER = "adapter"  # the LoRA adapter's folder inside a package


def model_folder(path: str | Path) -> Path:
    """A run folder, a package or a Hugging Face folder -> the folder holding the model."""
    path = Path(path)
    for folder in (path, path / "model"):
        if (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file():
            return folder
    raise UserError(
        f"{path} holds no language model (no config.json, nor model/config.json); pass a run folder "
        "(runs/NAME), its model/ package, or a Hugging Face model folder"
    )


def load_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object, dict | None]:
    """(model in eval mode, tokenizer, our manifest or None) from a run, package or plain
    Hugging Face folder; our packages' weights are checked against their sha256 first, and a
    bare peft adapter folder is merged into the base its adapter_config.json names."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_folder(path)
    manifest = None
    if (folder / runs.MANIFEST).is_file():
        manifest = runs.read_manifest(folder)
        runs.verified_weights(manifest)
    with quiet():
        if (folder / "config.json").is_file():
            model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
        else:
            model = merge_adapter(folder, dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    check_vocabulary(model, tokenizer, folder)
    return model.eval(), tokenizer, manifest


def merge_adapter(adapter: Path, dtype: torch.dtype = torch.float32, base: str | Path | None = None) -> nn.Module:
    """The base model with the peft adapter in ``adapter`` folded into its weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if base is None:
        config = json.loads((adapter / "adapter_config.json").read_text())
        base = config.get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise UserError(
            f"{adapter}/adapter_config.json names the base model {base!r}, which is not a folder here; "
            "pass --base FOLDER (the model the adapter was trained on)"
        )
    with quiet(), warnings.catch_warnings():  # peft 0.21 asks transformers 5 a deprecated question
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        model = AutoModelForCausalLM.from_pretrained(model_folder(base), local_files_only=True, dtype=dtype)
        model = PeftModel.from_pretrained(model, adapter)
    return model.merge_and_unload()


def check_vocabulary(model: nn.Module, tokenizer, where: str | Path) -> None:
    """Every token id must have an embedding row: a tokenizer with more tokens than the model
    would index past the table (a crash mid-run, or silent garbage on some devices)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer):,} tokens but the model in {where} embeds {rows:,}; they do not "
            "belong together: use the tokenizer the model was trained with (leave lm.tokenizer unset to use the "
            "model folder's own) or train a new model on this tokenizer"
        )


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


def package_writer(model: nn.Module, tokenizer, base: Path | None) -> Callable[[Path, dict, dict], Path]:
    """``write(out, weights, manifest)``: the merged model as a Hugging Face folder, and with
    LoRA the adapter alone in ``adapter/`` (its config naming ``base``, the folder it adapts)."""
    import transformers

    def write(out: Path, weights: dict, manifest: dict) -> Path:
        plain = plain_model(model, weights)
        adapter = None
        if hasattr(model, "peft_config"):
            adapter = _copy_with(model, weights)
            adapter.peft_config["default"].base_model_name_or_path = str(base.resolve()) if base else None

        def hugging_face_files(folder: Path) -> None:
            plain.config.architectures = [type(plain).__name__]
            plain.config.save_pretrained(folder)
            plain.generation_config.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            if adapter is not None:
                adapter.save_pretrained(folder / ADAPTER)

        manifest = {**manifest, "transformers_version": transformers.__version__}
        return runs.write_package(out, plain.state_dict(), manifest, extra=hugging_face_files)

    return write


def _copy_with(model: nn.Module, weights: dict) -> nn.Module:
    import copy

    clone = copy.deepcopy(model)
    clone.load_state_dict(weights)
    return clone


def greedy_generate(model: nn.Module, tokenizer, prompts: list[str], max_new_tokens: int) -> list[tuple[str, bool]]:
    """(continuation, whether it ended with an eos token) per prompt, greedy, one at a time.

    Deliberately plain ``model.generate``: it draws no random numbers (so logging samples
    during training leaves resume exact) and it is the one place to switch to lm/generate.py."""
    stop = eos_ids(tokenizer, getattr(model, "generation_config", None))
    limit = getattr(model.config, "max_position_embeddings", None) or 1_000_000  # no new token past the context
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for prompt in prompts:
                ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
                ids = ids.to(next(model.parameters()).device)
                result = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max(1, min(max_new_tokens, limit - ids.shape[1])),
                    do_sample=False,
                    eos_token_id=stop,
                    pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0],
                )
                new = result[0, ids.shape[1] :].tolist()
                ended = bool(new) and new[-1] in stop
                out.append((tokenizer.decode(new[:-1] if ended else new, skip_special_tokens=False), ended))
    finally:
        model.train(was_training)
    return out
