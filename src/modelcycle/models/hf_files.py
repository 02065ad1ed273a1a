"""A package's files as faithful to the model it came from as transformers' own ``save_pretrained``:
the weights in the source's dtypes (or the one asked for), tied weights stored once, and the
tokenizer's files copied as they are, plus only what changed.

- **dtypes** are read from the source's safetensors headers (nothing is loaded): a bf16 model
  trained in float32 goes back to disk in bf16, each tensor in its own source dtype (a norm kept in
  float32 stays so); tensors the source did not have (a new head) take its most common dtype.
- **Tied weights** (``lm_head`` sharing ``embed_tokens``) are stored once, under the key
  transformers expects on load, by transformers' own ``remove_tied_weights_from_state_dict``; the
  weight conversions transformers applies on load (fused experts) are reverted, so the file holds
  the source's key names.
- **Tokenizer files** are copied byte for byte from the folder the tokenizer was read from. Saving a
  loaded tokenizer would rewrite them (``local_files_only`` injected, ``tokenizer_class`` changed).
  A chat template given in memory (a base model's default) is added as ``chat_template.jinja``,
  which transformers reads before the one in tokenizer_config.json; a tokenizer whose vocabulary or
  special tokens changed in memory is saved whole.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from modelcycle.errors import ConfigError, UserError
from modelcycle.models.hf import has_tokenizer, load_tokenizer

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # lm.save_dtype
TOKENIZER_FILES = (
    *("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"),
    *("vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model"),
    *("chat_template.jinja", "chat_template.json"),
)
CHAT_TEMPLATES = "additional_chat_templates"  # a folder of named templates (transformers 4.53+)
_INJECTED = ("local_files_only", "is_local")  # what from_pretrained's arguments leave in a saved tokenizer_config


def save_dtype(name: str) -> torch.dtype | None:
    """``lm.save_dtype`` -> a dtype, or None for "auto" (each tensor as in the source)."""
    if name == "auto":
        return None
    if name not in SAVE_DTYPES:
        raise ConfigError(f"lm.save_dtype={name}: use auto, {', '.join(SAVE_DTYPES)}")
    return SAVE_DTYPES[name]


def weight_dtypes(folder: Path) -> dict[str, torch.dtype]:
    """Each floating tensor's dtype in the safetensors files of ``folder``, from their headers."""
    found: dict[str, torch.dtype] = {}
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with open(file, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(min(size, 1 << 28)))
        except (OSError, ValueError):
            continue  # loading the weights reports an unreadable file by name
        for key, entry in header.items():
            if isinstance(entry, dict) and entry.get("dtype") in SAFETENSORS_DTYPES:
                found[key] = SAFETENSORS_DTYPES[entry["dtype"]]
    return found


def state_to_save(
    model: nn.Module, source: dict[str, torch.dtype], dtype: torch.dtype | None
) -> tuple[dict[str, torch.Tensor], torch.dtype | None]:
    """(the state dict ``save_pretrained`` would write, cast; the dtype most of it is in).
    ``dtype`` casts every floating tensor; None keeps each tensor's ``source`` dtype (the source's
    most common one for a tensor it lacked), or its own with no source."""
    state = model.state_dict()
    try:
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        state = remove_tied_weights_from_state_dict(state, model)
    except ImportError:  # older transformers: the output embedding tied to the input one, by hand
        state = _without_tied_output(model, state)
    try:
        from transformers.core_model_loading import revert_weight_conversion

        state = revert_weight_conversion(model, state)
    except ImportError:  # transformers 4 converts nothing on load
        pass
    common = Counter(source.values()).most_common(1)[0][0] if source else None
    out = {}
    for key, tensor in state.items():
        if tensor.is_floating_point():
            target = dtype or source.get(key, common) or tensor.dtype
            tensor = _cast(key, tensor, target)
        out[key] = tensor
    floating = Counter(t.dtype for t in out.values() if t.is_floating_point())
    return out, floating.most_common(1)[0][0] if floating else None


def _cast(key: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` in ``dtype``; a value float16 cannot hold (above 65,504) is an error, never an inf."""
    cast = tensor.to(dtype)
    if dtype == torch.float16 and not torch.isfinite(cast).all() and torch.isfinite(tensor).all():
        raise UserError(
            f"{key} holds values float16 cannot represent (largest {tensor.abs().max().item():.4g}, float16 ends at "
            "65,504): saved as float16 they would become inf; set lm.save_dtype=bfloat16 or float32"
        )
    return cast


def _without_tied_output(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    output, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    if output is None or output.weight is not inputs.weight:
        return state
    name = next(n for n, p in model.named_parameters(remove_duplicate=False) if p is output.weight and "embed" not in n)
    return {k: v for k, v in state.items() if k != name}


def tokenizer_folder(tokenizer) -> Path | None:
    """The folder ``tokenizer`` was read from, while it still holds tokenizer files."""
    where = getattr(tokenizer, "name_or_path", "") or ""
    folder = Path(where) if where else None
    return folder if folder is not None and folder.is_dir() and has_tokenizer(folder) else None


def write_tokenizer(tokenizer, out: Path) -> list[str]:
    """The tokenizer's files in ``out``: its source folder's as they are, plus what changed in
    memory; returns what was written other than copies (for the record)."""
    source = tokenizer_folder(tokenizer)
    on_disk = load_tokenizer(source) if source is not None else None
    if on_disk is None or not _same_tokens(on_disk, tokenizer) or isinstance(tokenizer.chat_template, dict):
        tokenizer.save_pretrained(out)
        _drop_injected(out / "tokenizer_config.json")
        return ["tokenizer (saved whole)"]
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    if (source / CHAT_TEMPLATES).is_dir():
        shutil.copytree(source / CHAT_TEMPLATES, out / CHAT_TEMPLATES)
    if tokenizer.chat_template != on_disk.chat_template and tokenizer.chat_template is not None:
        (out / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
        return ["chat_template.jinja"]
    return []


def _same_tokens(a, b) -> bool:
    return (
        a.get_vocab() == b.get_vocab()
        and a.special_tokens_map == b.special_tokens_map
        and sorted(a.all_special_tokens) == sorted(b.all_special_tokens)
    )


def _drop_injected(config: Path) -> None:
    if not config.is_file():
        return
    record = json.loads(config.read_text(encoding="utf-8"))
    if any(key in record for key in _INJECTED):
        kept = {k: v for k, v in record.items() if k not in _INJECTED}
        config.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
