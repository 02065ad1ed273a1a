"""Run folders and model packages.

A run is a folder (``runs/<name>/``) holding everything the run made. A model package
(``model/``) is ``model.safetensors`` + ``modelcycle.json``: architecture and its arguments,
classes, preprocessing, metrics, source run and the weights' sha256, so it loads with no code
from the file itself and is checked before use.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from modelcycle import runfiles
from modelcycle.config import Config, flatten, load_config
from modelcycle.errors import UserError
from modelcycle.runlock import LOCK_FILE, RunLock
from modelcycle.runlogs import EventLog, MetricsLog

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
    if not resume:
        _refuse_finished(path)
    return path


def _refuse_finished(path: Path) -> None:
    if (path / "checkpoints").exists():
        raise UserError(
            f"run folder {path} already has checkpoints; add --resume to continue it, --overwrite to "
            "start it again, or choose another run.name"
        )


def make_run_dir(path: Path, config: Config, overwrite: bool, resume: bool = False) -> RunLock:
    """Lock the run folder for this process (see runlock.py), then, under the lock, empty it for
    ``overwrite``, clear what interrupted processes left behind and save the resolved config.
    The caller holds the returned lock for the life of the run and releases it at the end."""
    lock = RunLock.acquire(path)
    try:
        if not resume and not overwrite:
            _refuse_finished(path)  # another process may have trained it since check_run_dir
        if overwrite:
            _empty(path)
        removed = clean_litter(path)
        with runfiles.writing(path / "config.yaml", "the run's config", "run the same command again"):
            runfiles.replace_text(path / "config.yaml", config.to_yaml())
        event = EventLog(path / "events.log")
        if note := lock.takeover_note():
            event(note)
        if removed:
            event("removed what an interrupted process left behind: " + ", ".join(removed))
    except BaseException:
        lock.release()
        raise
    return lock


@contextlib.contextmanager
def run_folder(path: Path, config: Config, overwrite: bool, resume: bool, writer: bool = True) -> Iterator[None]:
    """The life of a run in its folder: :func:`make_run_dir` (the lock) on entry when this
    process is the ``writer`` (rank 0), the lock released on exit however the run ends, and a
    full disk met in between an error naming the file, not a traceback."""
    lock = make_run_dir(path, config, overwrite, resume) if writer else None
    try:
        with runfiles.disk_errors(path, "run the same command with --resume"):
            yield
    finally:
        if lock is not None:
            lock.release()


def _empty(path: Path) -> None:
    """--overwrite: everything in the folder goes but the lock this process holds on it."""
    for child in path.iterdir():
        if child.name == LOCK_FILE:
            continue
        try:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        except OSError as exc:
            raise UserError(
                f"--overwrite could not delete {child}: {runfiles.cause(exc)}; remove it yourself"
            ) from None


_LITTER = re.compile(r"\.(tmp|old)-\d+$")  # write_package's, atomic_save's, status.json's temporaries


def clean_litter(run_dir: Path) -> list[str]:
    """Remove the temporary files and folders a process killed mid-write left in the run folder,
    its checkpoints and its package; call it under the run's lock, when nothing else writes there.
    A package moved aside for a swap (``model.old-PID``) while ``model/`` is missing is put back."""
    removed: list[str] = []
    model = run_dir / "model"
    moved_aside = sorted(run_dir.glob("model.old-*"))
    if moved_aside and not model.exists():  # killed between the two renames of the swap
        with contextlib.suppress(OSError):
            os.replace(moved_aside[-1], model)
            removed.append(f"{moved_aside.pop().name} (moved back to model/)")
    for folder in (run_dir, run_dir / "checkpoints", model):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if not _LITTER.search(path.name):
                continue
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path.relative_to(run_dir).as_posix())
    return removed


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
    ``extra(folder)`` adds files of its own (a Hugging Face config and tokenizer) before the swap.
    Every file is on disk (fsync) before the swap, and the swap itself after it."""
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
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
        runfiles.fsync_tree(tmp)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        runfiles.fsync_dir(out.parent)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            with contextlib.suppress(OSError):
                os.replace(old, out)
        why = runfiles.cause(exc) if isinstance(exc, OSError) else _safetensors_cause(exc)
        kept = "the previous package is intact" if out.exists() else "there was no package before"
        raise runfiles.WriteFailed(
            f"could not write model package {out}: {why}; {kept}. Fix that, then run the same command again "
            "(with --resume for a run: it writes the package from the last checkpoint)"
        ) from None
    shutil.rmtree(old, ignore_errors=True)
    return out


def _safetensors_cause(exc: Exception) -> str:
    text = str(exc)
    if "No space left" in text or "os error 28" in text:
        return "the disk is full (no space left on device)"
    return text


def update_manifest(folder: Path, keys: list[str], value: object) -> dict:
    """Set ``manifest[keys[0]][keys[1]]... = value`` and rewrite modelcycle.json atomically."""
    manifest = runfiles.read_json(folder / MANIFEST, "package manifest", _REWRITE_PACKAGE)
    node = manifest
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    with runfiles.writing(folder / MANIFEST, "package manifest", "run the same command again"):
        runfiles.replace_text(folder / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


_REWRITE_PACKAGE = "the package is damaged: write it again (train or --resume its run) or copy it again"


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
    manifest = runfiles.read_json(folder / MANIFEST, "package manifest", _REWRITE_PACKAGE)
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
    try:  # the right bytes need not be safetensors: a package written by hand, or a manifest rewritten to fit
        with safe_open(weights, "pt"):
            pass
    except (SafetensorError, OSError, ValueError) as exc:
        raise runfiles.DamagedFile(
            f"{weights} is not a safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}), "
            f"though it matches the sha256 in {MANIFEST}; {_REWRITE_PACKAGE}"
        ) from None
    return weights


def refuse_own_run(run_dir: Path, manifest: dict, message: str) -> None:
    """``--overwrite`` deletes the run folder: refuse when the package we read from lives there."""
    source = manifest.get("source_run")
    if run_dir.resolve() in (Path(manifest["_dir"]).resolve().parent, Path(source).resolve() if source else None):
        raise UserError(message)
