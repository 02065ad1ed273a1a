"""Running a packaged classifier over images, shared by evaluate, predict and crossval."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from modelcycle.config import DataSection
from modelcycle.data.datasets import make_loader
from modelcycle.data.manifest import PreparedData
from modelcycle.progress import progress_bar


def data_section(manifest: dict, workers: int | None = None) -> DataSection:
    pre = manifest["preprocessing"]
    return DataSection(
        image_size=pre["image_size"],
        channels=pre["channels"],
        mean=pre["mean"],
        std=pre["std"],
        resize_to=pre.get("resize_to"),  # a Hugging Face model's processor (models/hf_image_processing.py)
        keep_aspect=pre.get("keep_aspect", True),
        cache=False,
        workers=workers,
    )


def preprocess(manifest: dict, items: list[tuple[Path, int]]) -> torch.Tensor:
    """Images as the model sees them at inference: one float batch."""
    cfg = data_section(manifest, workers=0)
    loader = make_loader(items, PreparedData(Path("."), manifest["classes"], {}), cfg, cfg.channels, len(items), False)
    return next(iter(loader))[0]


def predict_items(
    predictor,
    items: list[tuple[Path, int]],
    batch_size: int = 256,
    workers: int | None = None,
    progress: str | None = None,
) -> np.ndarray:
    """Softmax probabilities, one row per item, in order, from any backend's predictor;
    ``progress`` names the work on a progress bar (progress.py) counting images."""
    manifest = predictor.manifest
    cfg = data_section(manifest, workers)
    data = PreparedData(Path("."), manifest["classes"], {})
    loader = make_loader(items, data, cfg, cfg.channels, batch_size, train=False)
    out = []
    with progress_bar(progress, len(items)) if progress else nullcontext(lambda n=1: None) as advance:
        for images, _ in loader:
            out.append(torch.softmax(torch.from_numpy(predictor(images.numpy())), dim=1))
            advance(len(images))
    return torch.cat(out).numpy() if out else np.zeros((0, len(manifest["classes"])), np.float32)
