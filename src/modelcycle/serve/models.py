"""What the server holds per classifier: the predictor, its preprocessing and the names it answers
to; :func:`load_classifier` loads one for ``/v1/predict`` and KServe v2 alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelcycle.config import ServeSection
from modelcycle.data.images import decode_bytes, decode_sized
from modelcycle.data.transforms import build_transform
from modelcycle.errors import UserError
from modelcycle.evaluation.inference import data_section
from modelcycle.export.runtime import Predictor, TextPredictor, load_predictor, load_text_predictor
from modelcycle.models import hub
from modelcycle.monitor.features import image_side
from modelcycle.packages import VISION, Package, open_package

PLATFORMS = {
    "torch": "pytorch_safetensors",
    "onnx": "onnxruntime_onnx",
    "torchscript": "pytorch_torchscript",
    "pt2": "pytorch_export",
}


@dataclass
class ServedModel:
    name: str
    version: str
    predictor: Predictor
    max_pixels: int
    path: str
    task: str | None = None  # what /v1/models shows: the package's task
    transform: object = field(init=False, repr=False)

    def __post_init__(self):
        manifest = self.predictor.manifest
        pre = manifest["preprocessing"]
        self.classes: list[str] = list(manifest["classes"])
        self.channels: int = pre["channels"]
        self.size: int = pre["image_size"]
        self.transform = build_transform(data_section(manifest), train=False)
        self.mean = np.asarray(pre["mean"], np.float32).reshape(-1, 1, 1) * 255.0
        self.inv_std = 1.0 / (np.asarray(pre["std"], np.float32).reshape(-1, 1, 1) * 255.0)

    @property
    def input_shape(self) -> list[int]:
        return [self.channels, self.size, self.size]

    def preprocess(self, data: bytes) -> np.ndarray:
        """Encoded image file -> (C, H, W) float32, exactly as `evaluate` feeds the model."""
        return self._tensor(decode_bytes(data, self.channels, min_size=self.size, max_pixels=self.max_pixels))

    def preprocess_sized(self, data: bytes) -> tuple[np.ndarray, float]:
        """:meth:`preprocess` and the file's ``size`` monitor feature, for ``serve --monitor``."""
        image, (width, height) = decode_sized(data, self.channels, min_size=self.size, max_pixels=self.max_pixels)
        return self._tensor(image), image_side(width, height)

    def _tensor(self, image: np.ndarray) -> np.ndarray:
        image = self.transform(image=image)["image"]
        if image.ndim == 2:
            image = image[:, :, None]
        chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
        return (chw - self.mean) * self.inv_std

    def describe(self) -> dict:
        return {**_described(self), "input_shape": self.input_shape}

    def metadata(self) -> dict:
        """The Open Inference Protocol's model metadata."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": PLATFORMS[self.predictor.backend],
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [-1, *self.input_shape]},
                {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]},
            ],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self.classes)]},
                {"name": "logits", "datatype": "FP32", "shape": [-1, len(self.classes)]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
            ],
            "parameters": {"classes": self.classes, "preprocessing": self.predictor.manifest["preprocessing"]},
        }


@dataclass
class ServedText:
    """A text classifier: texts in, the same ranked classes out as for images."""

    name: str
    version: str
    predictor: TextPredictor
    path: str
    task: str | None = None  # what /v1/models shows: the package's task
    texts = True

    def __post_init__(self):
        self.classes: list[str] = list(self.predictor.manifest["classes"])

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.predictor.encode(texts)

    def describe(self) -> dict:
        return {**_described(self), "task": self.task, "input": "text"}

    def metadata(self) -> dict:
        """The Open Inference Protocol's model metadata: one BYTES input of UTF-8 texts."""
        n = len(self.classes)
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": PLATFORMS[self.predictor.backend],
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, n]},
                {"name": "logits", "datatype": "FP32", "shape": [-1, n]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
            ],
            "parameters": {"classes": self.classes, "preprocessing": self.predictor.manifest["preprocessing"]},
        }


def _described(served) -> dict:
    """What /v1/models says of a classifier."""
    return {
        "name": served.name,
        "version": served.version,
        "backend": served.predictor.backend,
        "classes": served.classes,
    }


def model_name(path: Path) -> str:
    """runs/flowers and runs/flowers/model are both served as "flowers"; a Hub id opened from the
    Hugging Face cache (Qwen/Qwen2.5-0.5B-Instruct[@revision]) as its id without the revision, as
    vLLM serves it and OpenAI clients name it."""
    if repo := hub.hub_id(path):
        return repo.split("@")[0]
    path = path.resolve()
    return path.parent.name if path.name == "model" else path.name


def load_models(specs: list[str], backend: str, max_pixels: int, threads: int | None = None) -> list[ServedModel]:
    """``runs/a`` or ``name=runs/a`` per model; names must be unique (they are URL paths)."""
    models: list[ServedModel] = []
    for spec in specs:
        name, _, path = spec.rpartition("=")
        path = Path(path)
        name = name or model_name(path)
        if any(m.name == name for m in models):
            raise UserError(f"two models are named {name!r}; name them apart, e.g. {name}-v2={path}")
        package = open_package(path)
        package.require(VISION, "{folder} holds a {task} model; the image server serves image classifiers")
        predictor = load_predictor(package, backend, threads=threads, spin=False)
        models.append(ServedModel(name, package.version, predictor, max_pixels, str(path)))
    return models


def load_classifier(name: str, path: Path, package: Package, cfg: ServeSection) -> ServedModel | ServedText:
    """An image or a text classifier (by what its files hold) behind ``serve.backend``."""
    if package.kind == VISION:
        predictor = load_predictor(package, cfg.backend, spin=False)
        return ServedModel(name, package.version, predictor, cfg.max_pixels, str(path))
    return ServedText(name, package.version, load_text_predictor(package, cfg.backend, spin=False), str(path))
