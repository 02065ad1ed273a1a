"""Opening a language model: a run folder, an LM package (its weights checked against
``modelcycle.json``'s sha256), a plain Hugging Face folder such as a downloaded Qwen, or a bare
peft adapter folder (merged into the base its ``adapter_config.json`` names).

All of it is ``modelcycle.packages.open_package``; these are the LM-shaped views of it that
training (``model.init_from``), ``modelcycle evaluate`` and generation, chat and serving use.
Only safetensors weights are read: a ``pytorch_model.bin`` is a pickle, which can run code when
loaded, and nothing here loads code from a file the user did not write.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from modelcycle.errors import UserError
from modelcycle.lm.generate import LanguageModel
from modelcycle.models.hf import adapter_base, check_tokenizer, check_vocabulary, fold_adapter
from modelcycle.packages import ADAPTER, CAUSAL, Package, find_folder, open_package

__all__ = [
    "adapter_base",
    "check_tokenizer",
    "check_vocabulary",
    "is_language_model",
    "lm_folder",
    "load_lm",
    "merge_adapter",
    "open_lm",
]


def lm_folder(path: str | Path) -> Path:
    """A run folder, a package, a Hugging Face folder or a peft adapter folder -> the folder
    holding the model (its config.json or adapter_config.json)."""
    return find_folder(path)


def is_language_model(path: str | Path) -> bool:
    """True for an LM package, a plain Hugging Face folder or an adapter folder; False for image
    and text classifiers and for anything that is not a model folder."""
    try:
        return open_package(path).kind in (CAUSAL, ADAPTER)
    except UserError:
        return False


def open_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object, dict | None]:
    """(model in eval mode on the CPU, tokenizer, our manifest or None) from any folder
    ``lm_folder`` accepts."""
    loaded = _causal(open_package(path), dtype)
    return loaded.model, loaded.tokenizer, loaded.manifest


def _causal(package: Package, dtype: torch.dtype):
    if package.kind not in (CAUSAL, ADAPTER):
        raise UserError(f"{package.folder} holds a {package.task} model, not a language model")
    return package.load_causal(dtype)


def load_lm(path: str | Path, device: str = "auto", dtype: torch.dtype | None = None) -> LanguageModel:
    """The model ready to generate on ``device`` ("auto": the GPU when there is one), with its
    tokenizer. float32 on CPU unless ``dtype`` says otherwise; bfloat16 on a GPU. Named after its
    run (runs/NAME), its folder, or its Hub id."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    package = open_package(path)
    loaded = _causal(package, dtype)
    return LanguageModel(loaded.model.to(device), loaded.tokenizer, name=package.name, manifest=loaded.manifest)


def merge_adapter(adapter: Path, dtype: torch.dtype = torch.float32, base: str | Path | None = None) -> nn.Module:
    """The base model with the peft adapter in ``adapter`` folded into its weights."""
    model, _, _ = open_lm(adapter_base(adapter, base), dtype)  # the base's own checks: safetensors, sha256, vocabulary
    return fold_adapter(model, adapter)
