"""Pruning: zero the smallest weights (unstructured) or whole filters (structured), re-estimate
the BatchNorm statistics, optionally fine-tune with the zeros held (resumably), and measure
validation accuracy at each stage.

What it does not buy: the package keeps the dense layout (a plain state_dict that loads into the
normal architecture), so the file is as large and inference as slow as before. Zeros only pay off
with a sparse kernel, a compressor (zeros compress well), or by physically removing the zeroed
channels, which this module does not do. Its use is to find how much of a model is redundant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from modelcycle.compress.masks import (
    LAYERS,
    METHODS,
    STATE_FILE,
    KeepPruned,
    apply_masks,
    channel_masks,
    magnitude_masks,
    prunable_layers,
    recalibrate_batchnorm,
    sparsity,
)
from modelcycle.config import Config, load_config
from modelcycle.data.manifest import PreparedData
from modelcycle.engine.callbacks import Callback
from modelcycle.errors import UserError
from modelcycle.evaluation.inference import predict_items
from modelcycle.export.runtime import Predictor, torch_runner
from modelcycle.packages import VISION, load_model, open_package
from modelcycle.runs import Run, read_manifest, update_manifest, write_package
from modelcycle.training.service import train

LR_FACTOR = {"unstructured": 0.1, "structured": 1.0}  # default fine-tuning lr: the source run's times this
RECALIBRATE = 512  # training images for the BatchNorm re-estimation


def save_state(out: Path, masks: dict[str, torch.Tensor], settings: dict, record: dict, source: Path) -> None:
    """The masks and the figures measured before fine-tuning, written before the run starts, so
    ``--resume`` holds the very same zeros and reports the same figures. Bool tensors: a quarter of
    the fp32 weights' size. It also marks the folder as a pruned run for ``train --resume``."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{STATE_FILE}.tmp-{os.getpid()}"
    metadata = {"settings": json.dumps(settings), "record": json.dumps(record), "source": str(source.resolve())}
    save_file({k: v.contiguous().clone() for k, v in masks.items()}, tmp, metadata=metadata)  # some share memory
    os.replace(tmp, out / STATE_FILE)


def load_state(out: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(masks, settings, record) as :func:`save_state` wrote them."""
    with safe_open(out / STATE_FILE, "pt") as f:
        masks = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        meta = f.metadata()
    return masks, json.loads(meta["settings"]), json.loads(meta["record"])


def accuracy(model: nn.Module, manifest: dict, items: list) -> float:
    predictor = Predictor("torch", manifest, torch_runner(model))
    probs = predict_items(predictor, items, workers=0 if len(items) < 1024 else None)
    return float((probs.argmax(1) == np.array([label for _, label in items])).mean())


def finetune_config(
    source: Path, manifest: dict, out: Path, epochs: int, lr: float | None, method: str = "unstructured"
) -> Config:
    """The source run's recipe (or, for a bare package, one built from its manifest), retargeted.

    The default lr is the source run's times LR_FACTOR[method] (measured on digits, see
    docs/deploy.md). Unstructured pruning leaves the net near a good solution: a tenth of the lr
    recovers it, and a full lr (with its schedule restarted) would throw much of it away.
    Structured pruning removes whole features, and the net must re-learn to route around them:
    a tenth is too timid for that in a few epochs. Warm-up is off: it protects a random init
    from big first steps, and this is not one.
    """
    runs = [source, Path(manifest.get("source_run", source))]
    run = next((Run(p) for p in runs if (p / "config.yaml").is_file()), None)
    tree = run.config.model_dump(mode="json") if run else Config().model_dump(mode="json")
    arch, pre = manifest["architecture"], manifest["preprocessing"]
    tree["run"] = {"dir": str(out.parent), "name": out.name}
    tree["model"] = {"name": arch["name"], "args": arch.get("args") or {}}
    tree["data"].update(root=manifest["data_root"], image_size=arch["image_size"], channels=arch["in_channels"])
    tree["data"].update(mean=pre["mean"], std=pre["std"])
    if lr is None:
        lr = float(f"{tree['train']['lr'] * LR_FACTOR[method]:.6g}")  # 0.0003, not 0.00030000000000000003
    tree["train"].update(epochs=epochs, lr=lr, warmup_epochs=0)
    return load_config(None, [], base=tree)


def _check_arguments(target: float, method: str, epochs: int, lr: float | None, recalibrate: int, resume: bool) -> None:
    if method not in METHODS:
        raise UserError(f"--prune-method {method!r}: choose one of {', '.join(METHODS)}")
    if not 0 < target < 1:
        raise UserError(f"--prune {target}: give the fraction of weights to zero, above 0 and below 1")
    if epochs < 0:
        raise UserError(f"--finetune-epochs {epochs}: give 0 (no fine-tuning) or more")
    if lr is not None and epochs == 0:
        raise UserError(f"--lr {lr} sets the fine-tuning learning rate; add --finetune-epochs 1 or more, or drop --lr")
    if lr is not None and lr <= 0:
        raise UserError(
            f"--lr {lr}: give a learning rate above 0 (default: the source run's times {LR_FACTOR[method]:g})"
        )
    if recalibrate < 0:
        raise UserError(
            f"--recalibrate {recalibrate}: give a number of training images, or 0 to skip the re-estimation"
        )
    if resume and epochs == 0:
        raise UserError(
            "--resume continues an interrupted fine-tune; give the --finetune-epochs of the interrupted command"
        )


def prune_model(
    source: str | Path,
    out: str | Path,
    sparsity_target: float,
    method: str = "unstructured",
    finetune_epochs: int = 0,
    lr: float | None = None,
    recalibrate: int = RECALIBRATE,
    resume: bool = False,
    progress: bool = True,
    callbacks: list[Callback] | None = None,
) -> dict:
    """Prune ``source`` (run folder or package) into ``out``; returns the new modelcycle.json.

    With ``finetune_epochs`` 0 ``out/model/`` is a package; otherwise ``out`` is a run folder made
    by the training engine, so ``modelcycle evaluate out`` works on it like on any run, and
    ``resume=True`` continues an interrupted fine-tune with the masks saved in ``out``.
    ``recalibrate`` training images re-estimate the BatchNorm statistics after pruning (0: off).
    """

    _check_arguments(sparsity_target, method, finetune_epochs, lr, recalibrate, resume)
    source, out = Path(source), Path(out)
    package = open_package(source).require(
        VISION, "{folder} holds a {task} model; pruning takes image classifiers only"
    )
    manifest = package.manifest
    if manifest["architecture"].get("layout") == "transformers":  # its package must stay a transformers folder
        raise UserError(
            f"{manifest['_dir']} holds a Hugging Face image model ({manifest['architecture'].get('class')}); "
            "pruning writes modelcycle's own package layout, so it takes modelcycle's image architectures only. "
            "Quantize it (`modelcycle compress RUN --quantize int8`) or distill it into one of ours "
            "(`modelcycle distill`)"
        )
    if manifest.get("backend", "torch") != "torch":
        raise UserError(
            f"{manifest['_dir']} is not a PyTorch package (backend {manifest['backend']!r}), so it cannot be "
            "pruned; prune the original run"
        )
    if manifest.get("data_root") is None:
        raise UserError(f"{manifest['_dir']}/modelcycle.json names no data folder, so accuracy cannot be measured")
    items = PreparedData.open(manifest["data_root"]).split("val")
    # what fixes the masks and the start weights: resuming with other values would mix two runs
    settings = {
        "method": method,
        "target": sparsity_target,
        "recalibrate": recalibrate,
        "source_sha256": manifest["weights"]["sha256"],
    }
    continuing = resume and (out / "checkpoints" / "last.pt").is_file()
    if continuing:
        masks, record = _resumable_state(out, settings)
        start = None
    else:  # --resume without a checkpoint to resume from starts afresh, like `train --resume`
        if (out / "checkpoints").exists() and not resume:
            hint = " add --resume to continue it," if finetune_epochs and (out / STATE_FILE).is_file() else ""
            raise UserError(f"{out} already holds a run with checkpoints;{hint} choose another --out or delete {out}")
        masks, start, record = _prune(source, manifest, items, settings)
    keys = ("task", "backend", "architecture", "classes", "preprocessing", "data_root")
    if finetune_epochs == 0:
        package = write_package(out / "model", start, {k: manifest[k] for k in keys if k in manifest})
    else:
        if not continuing:
            save_state(out, masks, settings, record, source)
        config = finetune_config(source, manifest, out, finetune_epochs, lr, method)
        lr = config.train.lr
        holder = KeepPruned(start, masks)
        run = train(config, resume=resume, callbacks=[holder, *(callbacks or [])], progress=progress)
        package = run.model_dir
    saved, _ = load_model(package)  # every figure below is of the file, not of the model in memory
    params, layers = dict(saved.named_parameters()), prunable_layers(saved)
    if any(bool(params[name][~keep].any()) for name, keep in masks.items()):
        raise RuntimeError(f"bug: a pruned weight in {package} is not zero")
    record["accuracy"]["finetuned"] = accuracy(saved, manifest, items) if finetune_epochs else None
    record.update(
        sparsity=sparsity(saved),
        finetune_epochs=finetune_epochs,
        finetune_lr=lr,
        kept_dense=[n for n, m in saved.named_modules() if isinstance(m, LAYERS) and n not in layers],
    )
    update_manifest(package, ["source_package"], str(Path(manifest["_dir"]).resolve()))
    update_manifest(package, ["pruning"], record)
    return read_manifest(package)


def _prune(source: Path, manifest: dict, items: list, settings: dict) -> tuple[dict, dict, dict]:
    """(masks, pruned and recalibrated state_dict, the record so far) for ``settings``."""
    from modelcycle.compress.quantize import calibration_images

    model, _ = load_model(source)
    if not prunable_layers(model):
        raise UserError(f"{manifest['architecture']['name']} has no Conv/Linear layer besides its first and last")
    before = accuracy(model, manifest, items)
    if settings["method"] == "unstructured":
        masks = magnitude_masks(model, settings["target"])
    else:
        masks = channel_masks(model, settings["target"])
    apply_masks(model, masks)
    pruned = accuracy(model, manifest, items)
    images = calibration_images(manifest, settings["recalibrate"]) if settings["recalibrate"] else np.empty(0)
    used = recalibrate_batchnorm(model, images, masks)
    record = {
        "method": settings["method"],
        "target": settings["target"],
        "recalibrate": used,
        "accuracy": {
            "split": "val",
            "images": len(items),
            "source": before,
            "pruned": pruned,
            "recalibrated": accuracy(model, manifest, items) if used else None,
        },
    }
    return masks, model.state_dict(), record


def _resumable_state(out: Path, settings: dict) -> tuple[dict[str, torch.Tensor], dict]:
    if not (out / STATE_FILE).is_file():
        raise UserError(
            f"{out} has checkpoints but no {STATE_FILE}, so it is not a pruned fine-tune that --resume can "
            "continue; continue an ordinary run with `modelcycle train ... --resume`"
        )
    masks, saved, record = load_state(out)
    changed = [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in settings.items() if saved.get(key) != value]
    if changed:
        raise UserError(
            f"--resume: {out} was pruned with other settings ({'; '.join(changed)}); resume with the same "
            "--prune, --prune-method and --recalibrate from the same source, or start again with another --out"
        )
    return masks, record
