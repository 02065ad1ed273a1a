"""One way to run any model package, whatever it holds: PyTorch weights, an ONNX file (fp32 or
int8), TorchScript or torch.export (.pt2). evaluate, predict, serve and bench all go through here.
An image classifier's .onnx file copied out of its package runs too: its metadata says the rest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modelcycle.errors import UserError
from modelcycle.packages import VISION, Package, open_package
from modelcycle.runs import sha256_file

BACKENDS = ("auto", "torch", "onnx", "torchscript", "pt2")


@dataclass
class Predictor:
    backend: str
    manifest: dict
    run: Callable[[np.ndarray], np.ndarray]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 preprocessed images -> (N, classes) float32 logits."""
        return self.run(np.ascontiguousarray(images, dtype=np.float32))


def load_predictor(
    path: str | Path | Package,
    backend: str = "auto",
    threads: int | None = None,
    spin: bool = True,
    trust_code: bool = False,
) -> Predictor:
    """The image classifier in ``path`` (a run, a package or an opened :class:`Package`) behind
    ``backend``: its PyTorch weights, or its ONNX / TorchScript / .pt2 export, each file checked;
    or a lone .onnx file exported by modelcycle, labelled by the metadata inside it."""
    from modelcycle.export.formats import onnx_runner, pt2_runner, torchscript_runner

    if backend not in BACKENDS:
        raise UserError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if not isinstance(path, Package) and Path(path).suffix == ".onnx" and Path(path).is_file():
        return _lone_onnx(Path(path), backend, threads, spin)
    package = path if isinstance(path, Package) else open_package(path, trust_code)
    package.require(
        VISION, "{folder} holds a {task} model, not an image classifier; this command takes image classifiers only"
    )
    manifest = package.manifest
    primary = package.backend
    backend = primary if backend == "auto" else backend
    if backend == "torch":
        if primary != "torch":
            raise UserError(f"{manifest['_dir']} holds a {primary} model only; use backend {primary}")
        return Predictor("torch", manifest, torch_runner(package.load_vision()))
    file = _checked_file(manifest, backend, primary)
    if backend == "onnx":
        runner = onnx_runner(file, threads, spin)
    else:
        runner = (torchscript_runner if backend == "torchscript" else pt2_runner)(file)
    return Predictor(backend, manifest, runner)


def _lone_onnx(file: Path, backend: str, threads: int | None, spin: bool) -> Predictor:
    """An .onnx file without its package: classes and preprocessing from its metadata_props."""
    from modelcycle.export.formats import onnx_runner
    from modelcycle.export.metadata import manifest_from, read_onnx

    if backend not in ("auto", "onnx"):
        raise UserError(f"{file} is an ONNX file: it runs on backend onnx, not {backend}")
    return Predictor("onnx", manifest_from(read_onnx(file), file), onnx_runner(file, threads, spin))


def _checked_file(manifest: dict, backend: str, primary: str) -> Path:
    folder = Path(manifest["_dir"])
    record = manifest["weights"] if primary == backend else manifest.get("exports", {}).get(backend)
    if record is None:
        raise UserError(f"{folder} has no {backend} export; run `modelcycle export {folder} --format {backend}` first")
    file = folder / record["file"]
    if not file.is_file():
        raise UserError(f"{file} is missing; the package is incomplete (export it again)")
    if sha256_file(file) != record["sha256"]:
        raise UserError(f"{file} does not match the sha256 in modelcycle.json; the file is damaged or was changed")
    return file


def torch_runner(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    from modelcycle.export.formats import module_runner

    return module_runner(model.eval())


@dataclass
class TextPredictor:
    """A text classifier behind one backend: ``encode(texts)`` gives the packed (N, 2, L) int64
    ids and mask (padded to the package's max_length), ``__call__`` the (N, classes) logits."""

    backend: str
    manifest: dict
    tokenizer: object
    run: Callable[[np.ndarray], np.ndarray]

    def encode(self, texts: list[str]) -> np.ndarray:
        from modelcycle.export.text_onnx import encode

        return encode(self.tokenizer, texts, self.manifest["preprocessing"]["max_length"])

    def __call__(self, packed: np.ndarray) -> np.ndarray:
        return self.run(np.ascontiguousarray(packed, dtype=np.int64))


def load_text_predictor(
    path: str | Path | Package, backend: str = "auto", threads: int | None = None, spin: bool = True
) -> TextPredictor:
    """The text classifier in ``path``: its PyTorch weights, or its ONNX export (checked)."""
    from modelcycle.export.text_onnx import text_onnx_runner, text_torch_runner
    from modelcycle.models.hf import load_tokenizer
    from modelcycle.packages import SEQUENCE

    if backend not in ("auto", "torch", "onnx"):
        raise UserError(f"backend {backend!r}: a text classifier runs on torch or onnx")
    package = path if isinstance(path, Package) else open_package(path)
    package.require(SEQUENCE, "{folder} holds a {task} model, not a text classifier")
    manifest, primary = package.manifest, package.backend
    backend = primary if backend == "auto" else backend
    if backend == "torch":
        loaded = package.load_sequence_classifier()
        return TextPredictor("torch", manifest, loaded.tokenizer, text_torch_runner(loaded.model))
    file = _checked_file(manifest, backend, primary)
    return TextPredictor(backend, manifest, load_tokenizer(package.folder), text_onnx_runner(file, threads, spin))
