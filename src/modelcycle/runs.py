"""Run folders and model packages.

A run is a folder (``runs/<name>/``) holding everything the run made. A model package
(``model/``) is ``model.safetensors`` + ``modelcycle.json``: architecture and its arguments,
classes, preprocessing, metrics, source run and the weights' sha256, so it loads with no code
from the file itself and is checked before use.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from modelcycle.config import Config, flatten, load_config
from modelcycle.engine.loggers import MetricsLog
from modelcycle.errors import UserError

PACKAGE_FORMAT = "modelcycle.package/1"
MANIFEST = "modelcycle.json"
WEIGHTS = "model.safetensors"


@dataclass
class Run:
    path: Path

    @classmethod
    def open(cls, path: str | Path) -> Run:
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise UserError(
                f"{path} is not a run folder (no config.yaml); pass runs/NAME as made by `modelcycle train`"
            )
        return cls(path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Config:
        return load_config(self.path / "config.yaml")

    @property
    def metrics(self) -> list[dict]:
        return MetricsLog(self.path / "metrics.jsonl").read()

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def epoch_metrics(self) -> list[dict]:
        return [m for m in self.metrics if "epoch_time_s" in m]

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def check_run_dir(config: Config, resume: bool) -> Path:
    """Refuse to train over an earlier run by accident; nothing is written here."""
    path = Path(config.run.dir) / config.run.name
    if not resume and (path / "checkpoints").exists():
        raise UserError(
            f"run folder {path} already has checkpoints; add --resume to continue it, --overwrite to "
            "start it again, or choose another run.name"
        )
    return path


def make_run_dir(path: Path, config: Config, overwrite: bool) -> None:
    if overwrite and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    config.save(path / "config.yaml")


# settings that may change on --resume without changing the trained weights
_RESUME_SAFE = (
    "run.",
    "eval.",
    "track.",
    "tune.",
    "data.workers",
    "train.epochs",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.early_stop_patience",
    "monitor.",  # what serving logs and how drift is judged: not the weights
    "train.strategy",  # ddp and fsdp compute the same steps; a checkpoint resumes under either
)


def config_changes(path: Path, config: Config) -> list[str]:
    """Settings that differ from the run's saved config.yaml and would change the result."""
    saved_file = path / "config.yaml"
    if not saved_file.is_file():
        return []
    saved, now = flatten(load_config(saved_file).model_dump(mode="json")), flatten(config.model_dump(mode="json"))
    return [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(saved) | set(now))
        if saved.get(k) != now.get(k) and not k.startswith(_RESUME_SAFE)
    ]


# ---------------------------------------------------------------- model package


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_package(
    out: Path, state_dict: dict[str, torch.Tensor], manifest: dict, extra: Callable[[Path], None] | None = None
) -> Path:
    """Write the package beside ``out`` and swap it in, so a crash leaves the old one or the new.
    ``extra(folder)`` adds files of its own (a Hugging Face config and tokenizer) before the swap."""
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})  # the metadata transformers writes too
        if extra is not None:
            extra(tmp)
        manifest = {
            "format": PACKAGE_FORMAT,
            **manifest,
            "weights": {"file": WEIGHTS, "sha256": sha256_file(tmp / WEIGHTS)},
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "torch_version": torch.__version__,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"could not write model package {out}: {exc.strerror or exc}; the previous package is intact"
        ) from None
    return out


def update_manifest(folder: Path, keys: list[str], value: object) -> dict:
    """Set ``manifest[keys[0]][keys[1]]... = value`` and rewrite modelcycle.json atomically."""
    manifest = json.loads((folder / MANIFEST).read_text())
    node = manifest
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    tmp = folder / f"{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, folder / MANIFEST)
    return manifest


def package_dir(path: str | Path) -> Path:
    """A run folder or a package folder -> the package folder."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if (path / "model" / MANIFEST).is_file():
        return path / "model"
    if (path / "config.yaml").is_file():
        raise UserError(f"run {path} has no model package yet (model/{MANIFEST}); finish training or --resume it")
    raise UserError(f"{path} is neither a run folder nor a model package (no {MANIFEST})")


def read_manifest(path: str | Path) -> dict:
    folder = package_dir(path)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{folder / MANIFEST} is not valid JSON ({exc}); the package is damaged") from None
    if manifest.get("format") != PACKAGE_FORMAT:
        raise UserError(f"{folder / MANIFEST}: unknown package format {manifest.get('format')!r}")
    manifest["_dir"] = str(folder)
    return manifest


def verified_weights(manifest: dict) -> Path:
    """The package's weights file, checked against the sha256 its manifest records."""
    weights = Path(manifest["_dir"]) / manifest["weights"]["file"]
    if not weights.is_file():
        raise UserError(f"{weights} is missing; the model package is incomplete")
    if sha256_file(weights) != manifest["weights"]["sha256"]:
        raise UserError(f"{weights} does not match the sha256 in {MANIFEST}; the file is damaged or was changed")
    return weights


def pytorch_classifier(path: str | Path, role: str, verb: str) -> dict:
    """The manifest of a package that must hold PyTorch image-classifier weights (a distillation
    teacher, a fine-tuning source). An int8 ONNX copy runs outside PyTorch: it has no weights to
    train or to run under the engine's device and autocast, and its rounding would be passed on
    as if it were knowledge. ``role`` names the setting in messages, ``verb`` what to do instead."""
    manifest = read_manifest(path)
    backend = manifest.get("backend", "torch")
    if backend != "torch":
        source = manifest.get("source_package")
        hint = f" ({source})" if source else ""
        raise UserError(
            f"{role} {manifest['_dir']} holds {backend} weights (an int8 or exported copy), not PyTorch weights; "
            f"{verb} from the original run{hint}"
        )
    if manifest.get("task", "classify") != "classify":
        raise UserError(f"{role} {manifest['_dir']} is a {manifest['task']} model; {verb} needs an image classifier")
    return manifest


def refuse_own_run(run_dir: Path, manifest: dict, message: str) -> None:
    """``--overwrite`` deletes the run folder: refuse when the package we read from lives there."""
    source = manifest.get("source_run")
    if run_dir.resolve() in (Path(manifest["_dir"]).resolve().parent, Path(source).resolve() if source else None):
        raise UserError(message)


def load_model(path: str | Path, trust_code: bool = False) -> tuple[nn.Module, dict]:
    """Build the architecture named in the package and load its checked weights (eval mode).
    A package whose architecture is a Python file is built only with ``trust_code`` (or the
    ``--trust-code`` opt-in): see models/registry.py."""
    from modelcycle.models.registry import build_model

    manifest = read_manifest(path)
    task = manifest.get("task", "classify")
    if task != "classify":
        raise UserError(
            f"{manifest['_dir']} holds a {task} model (Hugging Face layout): `modelcycle evaluate` and `predict` take "
            "it, and transformers loads it as it is; this command takes image classifiers only"
        )
    weights = verified_weights(manifest)
    arch = manifest["architecture"]
    model = build_model(
        arch["name"],
        arch["in_channels"],
        arch["num_classes"],
        arch["image_size"],
        arch.get("args"),
        package=str(Path(manifest["_dir"]) / MANIFEST),
        trust_code=trust_code,
    )
    try:
        model.load_state_dict(load_file(weights))
    except RuntimeError as exc:
        raise UserError(f"{weights} does not fit architecture {arch['name']}: {exc}") from None
    return model.eval(), manifest
