"""One way to run any model package, whatever it holds: PyTorch weights, an ONNX file (fp32 or
int8) or TorchScript. evaluate, predict, serve and bench all go through here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modelcycle.errors import UserError
from modelcycle.runs import load_model, read_manifest, sha256_file

BACKENDS = ("auto", "torch", "onnx", "torchscript")


@dataclass
class Predictor:
    backend: str
    manifest: dict
    run: Callable[[np.ndarray], np.ndarray]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 preprocessed images -> (N, classes) float32 logits."""
        return self.run(np.ascontiguousarray(images, dtype=np.float32))


def load_predictor(path: str | Path, backend: str = "auto", threads: int | None = None, spin: bool = True) -> Predictor:
    from modelcycle.export.formats import onnx_runner, torchscript_runner

    if backend not in BACKENDS:
        raise UserError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    manifest = read_manifest(path)
    primary = manifest.get("backend", "torch")
    backend = primary if backend == "auto" else backend
    if backend == "torch":
        if primary != "torch":
            raise UserError(f"{manifest['_dir']} holds a {primary} model only; use backend {primary}")
        model, _ = load_model(path)
        return Predictor("torch", manifest, torch_runner(model))
    file = _checked_file(manifest, backend, primary)
    runner = onnx_runner(file, threads, spin) if backend == "onnx" else torchscript_runner(file)
    return Predictor(backend, manifest, runner)


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
    model = model.eval()

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(images)).float().numpy()

    return run
