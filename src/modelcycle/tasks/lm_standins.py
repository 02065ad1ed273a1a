"""STAND-INS for part 1's language-model helpers, which live on the lmcore branch.

Each has the name and signature of its part-1 twin (``modelcycle.lm.model.load_lm``,
``model_folder``, ``package_writer``, ``lora_targets``; ``modelcycle.lm.tokenizer.eos_ids``;
``modelcycle.tasks.lm.prepare_model`` and ``LMModel``) and only the behaviour the RLHF tasks
need. At merge: import those from part 1 and delete this file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from modelcycle import runs
from modelcycle.config import Config
from modelcycle.errors import ConfigError, UserError
from modelcycle.models.text import plain_model, quiet
from modelcycle.progress import info


def model_folder(path: str | Path) -> Path:
    path = Path(path)
    for folder in (path, path / "model"):
        if (folder / "config.json").is_file():
            return folder
    raise UserError(
        f"{path} holds no language model (no config.json, nor model/config.json); pass a run folder "
        "(runs/NAME), its model/ package, or a Hugging Face model folder"
    )


def load_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object, dict | None]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_folder(path)
    manifest = None
    if (folder / runs.MANIFEST).is_file():
        manifest = runs.read_manifest(folder)
        runs.verified_weights(manifest)
    with quiet():
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer, manifest


def eos_ids(tokenizer, generation_config=None) -> list[int]:
    ids = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, tokenizer.eos_token_id)
    return ids


def lora_targets(model: nn.Module, given: list[str] | None) -> list[str]:
    if given:
        return given
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for pair in (["q_proj", "v_proj"], ["query", "value"], ["c_attn"]):
        if set(pair) <= names:
            return pair
    raise ConfigError(f"set model.lora.target_modules (this model's Linear layers: {', '.join(sorted(names))})")


def package_writer(model: nn.Module, tokenizer, base: Path | None) -> Callable[[Path, dict, dict], Path]:
    import transformers

    def write(out: Path, weights: dict, manifest: dict) -> Path:
        plain = plain_model(model, weights)

        def hugging_face_files(folder: Path) -> None:
            plain.config.architectures = [type(plain).__name__]
            plain.config.save_pretrained(folder)
            plain.generation_config.save_pretrained(folder)
            tokenizer.save_pretrained(folder)

        manifest = {**manifest, "transformers_version": transformers.__version__}
        return runs.write_package(out, plain.state_dict(), manifest, extra=hugging_face_files)

    return write


@dataclass
class LMModel:
    model: nn.Module
    tokenizer: object
    record: dict  # the package's "architecture" entry
    tuning: dict
    base: Path | None  # the folder the weights started from


def prepare_model(config: Config) -> LMModel:
    """The causal LM a run trains, loaded from ``model.init_from`` (or a folder in ``model.name``),
    LoRA applied as configured (part 1 also builds one from a size preset)."""
    from modelcycle.models.text import apply_tuning, tuning_line

    cfg = config.model
    if cfg.freeze != "none":
        raise ConfigError(f"model.freeze={cfg.freeze}: language-model runs train every weight, or LoRA adapters only")
    source = cfg.init_from or cfg.name
    torch.manual_seed(config.train.seed)
    base = model_folder(source)
    model, tokenizer, _ = load_lm(base)
    model.train()
    record = {"name": str(source), "folder": str(base.resolve())}
    record |= {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters())}
    given = list(cfg.lora.target_modules) if "target_modules" in cfg.lora.model_fields_set else None
    targets = lora_targets(model, given) if cfg.lora.r else None
    model, tuning = apply_tuning(model, cfg, task_type="CAUSAL_LM", targets=targets)
    info(f"{record['name']} ({record['parameters']:,} parameters): {tuning_line(tuning)}")
    return LMModel(model, tokenizer, record, tuning, base)
