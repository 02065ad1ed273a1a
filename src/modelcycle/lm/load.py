"""Opening a language model for generation: a run folder, an LM package (its weights checked
against ``modelcycle.json``'s sha256) or a plain Hugging Face folder such as a downloaded Qwen.

Only safetensors weights are read: a ``pytorch_model.bin`` is a pickle, which can run code when
loaded, and nothing here loads code from a file the user did not write.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from modelcycle import runs
from modelcycle.errors import UserError
from modelcycle.lm.generate import LanguageModel

LM_TASKS = ("lm", "sft", "dpo", "ppo")  # packages that hold a causal LM (a reward model does not)


def lm_folder(path: str | Path) -> Path:
    """A run folder, a package or a Hugging Face folder -> the folder with config.json."""
    path = Path(path)
    for folder in (path, path / "model"):
        if (folder / "config.json").is_file():
            return folder
    if (path / "config.yaml").is_file():
        raise UserError(f"run {path} has no model package yet (model/config.json); finish training or --resume it")
    raise UserError(f"{path} is neither a run folder, an LM package nor a Hugging Face model folder (no config.json)")


def is_language_model(path: str | Path) -> bool:
    """True for an LM package or a plain Hugging Face folder; False for image and text
    classifiers (their packages say so) and for anything that is not a model folder."""
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
        return True  # load_lm reports the damage with the file's name


def load_lm(path: str | Path, device: str = "auto", dtype: torch.dtype | None = None) -> LanguageModel:
    """The model in eval mode on ``device`` ("auto": the GPU when there is one) with its
    tokenizer. float32 on CPU unless ``dtype`` says otherwise; bfloat16 on a GPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelcycle.models.text import quiet

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
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    try:
        with quiet():
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True, use_safetensors=True, dtype=dtype
            )
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{folder}: transformers could not load a causal LM and its tokenizer from it: {exc}") from None
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise UserError(
            f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only {rows} rows; "
            "the tokenizer does not belong to this model (use the tokenizer it was trained with)"
        )
    name = folder.parent.name if folder.name == "model" else folder.name
    return LanguageModel(model.to(device), tokenizer, name=name, manifest=manifest)
