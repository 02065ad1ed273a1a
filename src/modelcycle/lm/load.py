"""Opening a language model: a run folder, an LM package (its weights checked against
``modelcycle.json``'s sha256), a plain Hugging Face folder such as a downloaded Qwen, or a bare
peft adapter folder (merged into the base its ``adapter_config.json`` names).

``open_lm`` is the one loading core: training (``model.init_from``), ``modelcycle evaluate`` and
``load_lm`` (generation, chat, serving) all go through it, so every command refuses the same
folders with the same messages.

Only safetensors weights are read: a ``pytorch_model.bin`` is a pickle, which can run code when
loaded, and nothing here loads code from a file the user did not write.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from modelcycle import runs
from modelcycle.errors import ConfigError, UserError
from modelcycle.lm.generate import LanguageModel
from modelcycle.models.text import quiet

LM_TASKS = ("lm", "sft", "dpo", "ppo")  # packages that hold a causal LM (a reward model does not)


def lm_folder(path: str | Path) -> Path:
    """A run folder, a package, a Hugging Face folder or a peft adapter folder -> the folder
    holding the model (its config.json or adapter_config.json)."""
    path = Path(path)
    for folder in (path, path / "model"):
        if (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file():
            return folder
    if (path / "config.yaml").is_file():
        raise UserError(f"run {path} has no model package yet (model/config.json); finish training or --resume it")
    raise UserError(
        f"{path} holds no language model (no config.json, nor model/config.json); pass a run folder "
        "(runs/NAME), its model/ package, a Hugging Face model folder or a peft adapter folder"
    )


def is_language_model(path: str | Path) -> bool:
    """True for an LM package, a plain Hugging Face folder or an adapter folder; False for image
    and text classifiers (their packages say so) and for anything that is not a model folder."""
    try:
        folder = lm_folder(path)
    except UserError:
        return False
    manifest = folder / runs.MANIFEST
    if not manifest.is_file():
        return True
    try:
        return json.loads(manifest.read_text()).get("task") in LM_TASKS
    except json.JSONDecodeError:
        return True  # open_lm reports the damage with the file's name


def open_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object, dict | None]:
    """(model in eval mode on the CPU, tokenizer, our manifest or None) from any folder
    ``lm_folder`` accepts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = lm_folder(path)
    manifest = None
    if (folder / runs.MANIFEST).is_file():
        manifest = runs.read_manifest(folder)
        if manifest.get("task") not in LM_TASKS:
            raise UserError(f"{folder} holds a {manifest.get('task', 'classify')} model, not a language model")
        runs.verified_weights(manifest)
    if not list(folder.glob("*.safetensors")):
        raise UserError(
            f"{folder} has no .safetensors weights; only safetensors are loaded (a .bin file is a pickle that can "
            "run code). Convert it once with transformers: model.save_pretrained(folder, safe_serialization=True)"
        )
    adapter = not (folder / "config.json").is_file()
    # an adapter saved by peft alone has no tokenizer files: it reads its base model's
    has_tokenizer = any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer_from = folder if has_tokenizer or not adapter else lm_folder(adapter_base(folder))
    try:
        with quiet():
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_from, local_files_only=True)
            if adapter:
                model = merge_adapter(folder, dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    folder, local_files_only=True, use_safetensors=True, dtype=dtype
                )
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{folder}: transformers could not load a causal LM and its tokenizer from it: {exc}") from None
    check_vocabulary(model, tokenizer, folder)
    return model.eval(), tokenizer, manifest


def load_lm(path: str | Path, device: str = "auto", dtype: torch.dtype | None = None) -> LanguageModel:
    """The model ready to generate on ``device`` ("auto": the GPU when there is one), with its
    tokenizer. float32 on CPU unless ``dtype`` says otherwise; bfloat16 on a GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    model, tokenizer, manifest = open_lm(path, dtype)
    folder = lm_folder(path)
    name = folder.parent.name if folder.name == "model" else folder.name
    return LanguageModel(model.to(device), tokenizer, name=name, manifest=manifest)


def adapter_base(adapter: Path, base: str | Path | None = None) -> Path:
    """The folder of the model a peft adapter was trained on: ``base``, else the one its
    adapter_config.json names."""
    if base is None:
        config = json.loads((adapter / "adapter_config.json").read_text())
        base = config.get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise UserError(
            f"{adapter}/adapter_config.json names the base model {base!r}, which is not a folder here; "
            "pass --base FOLDER (the model the adapter was trained on)"
        )
    return Path(base)


def merge_adapter(adapter: Path, dtype: torch.dtype = torch.float32, base: str | Path | None = None) -> nn.Module:
    """The base model with the peft adapter in ``adapter`` folded into its weights."""
    from peft import PeftModel

    model, _, _ = open_lm(adapter_base(adapter, base), dtype)  # the base's own checks: safetensors, sha256, vocabulary
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
