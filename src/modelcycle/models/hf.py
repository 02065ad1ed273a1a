"""The Hugging Face mechanics every package reader shares: loading a causal LM or a sequence
classifier with its tokenizer from a folder (safetensors only), folding a peft adapter into its
base, and the vocabulary check. ``modelcycle.packages`` decides *what* to open; this module only
knows *how*.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from modelcycle.errors import ConfigError, UserError
from modelcycle.models import hub

# config keys that leave every weight's shape alone, so they may change under pretrained weights
PRETRAINED_SAFE = {
    *("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "classifier_dropout_prob"),
    "drop_path_rate",
}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """transformers reports every newly initialised head weight and draws a progress bar per load;
    a new head is the point of fine-tuning, so that report is noise here."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def require_safetensors(folder: Path) -> None:
    if not list(folder.glob("*.safetensors")):
        raise UserError(
            f"{folder} has no .safetensors weights; only safetensors are loaded (a .bin file is a pickle that can "
            "run code). Convert it once with transformers: model.save_pretrained(folder, safe_serialization=True)"
        )


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    with quiet():
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def load_causal(folder: Path, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with quiet():
        return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True, dtype=dtype)


def load_sequence_classifier(folder: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    with quiet():
        return AutoModelForSequenceClassification.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, dtype=dtype
        )


def apply_args(config, args: dict, folder: Path) -> bool:
    """``model.args`` into ``config`` (the transformers config read from ``folder``); returns
    ``pretrained`` (default true; false builds the architecture from random weights). Any other key
    must be one of the config's, and with pretrained weights one that changes no weight's shape."""
    args = dict(args)
    pretrained = args.pop("pretrained", True)
    if not isinstance(pretrained, bool):
        raise ConfigError(f"model.args.pretrained: {pretrained!r} is not true or false")
    known = config.to_dict()
    for key in args:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"model.args.{key}: {folder}/config.json has no such key{hint} (or pretrained)")
        if pretrained and key not in PRETRAINED_SAFE:
            raise ConfigError(
                f"model.args.{key} changes the architecture, so the pretrained weights would not fit it; add "
                "model.args.pretrained=false to train that architecture from random weights, or drop the key"
            )
    config.update(args)
    return pretrained


def adapter_base(adapter: Path, base: str | Path | None = None) -> Path:
    """The folder of the model a peft adapter was trained on: ``base``, else the one its
    adapter_config.json names (a folder, or a Hub id found in the local cache at the ``revision``
    it records: the commit the adapter was trained on, not whatever the cache's main is now)."""
    revision = None
    if base is None:
        config = json.loads((adapter / "adapter_config.json").read_text())
        base, revision = config.get("base_model_name_or_path"), config.get("revision")
    if base and not Path(base).is_dir() and hub.hub_id(base):
        return hub.snapshot(f"{base}@{revision}" if revision and "@" not in str(base) else str(base))
    if not base or not Path(base).is_dir():
        raise UserError(
            f"{adapter}/adapter_config.json names the base model {base!r}, which is not a folder here; "
            "pass --base FOLDER (the model the adapter was trained on)"
        )
    return Path(base)


def fold_adapter(model: nn.Module, adapter: Path) -> nn.Module:
    """``model`` (the base, already opened and checked) with the peft adapter in ``adapter`` folded in."""
    from peft import PeftModel

    with quiet(), warnings.catch_warnings():  # peft 0.21 asks transformers 5 a deprecated question
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        model = PeftModel.from_pretrained(model, adapter)
    return model.merge_and_unload()


def check_vocabulary(model: nn.Module, tokenizer, where: str | Path) -> None:
    """Every token id must have an embedding row: a tokenizer with more tokens than the model
    would index past the table (a crash mid-run, or silent garbage on some devices)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer):,} tokens but the model in {where} embeds only {rows:,}: the "
            "tokenizer does not belong to this model; use the tokenizer the model was trained with (leave "
            "lm.tokenizer unset to use the model folder's own) or train a new model on this tokenizer"
        )


def check_tokenizer(model: nn.Module, tokenizer, own, folder: str | Path, given: str | Path, allow: bool) -> None:
    """``tokenizer`` (read from ``given``) must be the model's: no more tokens than it embeds
    (always), and unless ``allow`` (lm.tokenizer_mismatch_ok), every token of ``own`` (the model
    folder's own tokenizer; None when it has none) at the same id, and the ids config.json names
    for bos/eos/pad special tokens in it as they are in ``own``. Two tokenizers of the same size
    trained on other text pass the first check and fail the second."""
    check_vocabulary(model, tokenizer, folder)
    if allow:
        return
    problems = []
    if own is not None:
        theirs = tokenizer.get_vocab()
        moved = [t for t, i in own.get_vocab().items() if theirs.get(t) != i]
        if moved:
            sample = ", ".join(repr(t) for t in sorted(moved)[:3])
            problems.append(f"{len(moved):,} of the model's {len(own):,} tokens have another id or none ({sample})")
    special = _special_ids(tokenizer)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        ids = getattr(model.config, name, None)
        for i in ids if isinstance(ids, list) else [ids]:
            if i is None or i < 0 or (own is not None and i not in _special_ids(own)) or i in special:
                continue
            token = tokenizer.convert_ids_to_tokens(i) if i < len(tokenizer) else None
            problems.append(f"config.json's {name}={i} is {token!r} there, not a special token")
    if problems:
        raise ConfigError(
            f"lm.tokenizer={given} does not belong to the model in {folder}: {'; '.join(problems)}. Leave lm.tokenizer "
            "unset to use the model's own tokenizer, or set lm.tokenizer_mismatch_ok=true if this tokenizer is meant "
            "for it (the model's token ids then mean other text)"
        )


def _special_ids(tokenizer) -> set[int]:
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if getattr(token, "special", False)}
