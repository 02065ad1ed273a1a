"""``modelcycle predict``: top-k classes with probabilities for image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelcycle.data.images import probe_image
from modelcycle.errors import DataError
from modelcycle.evaluation.inference import predict_items
from modelcycle.export.runtime import load_predictor


def predict(run: str | Path, images: list[str | Path], topk: int = 5, backend: str = "auto") -> list[dict]:
    """One dict per image: ``path``, ``label``, ``probability`` and ``topk`` (label, probability)."""
    if topk < 1:
        raise DataError(f"--topk {topk}: ask for at least 1 class per image")
    predictor = load_predictor(run, backend)
    manifest = predictor.manifest
    classes = manifest["classes"]
    paths = [Path(p) for p in images]
    for path in paths:
        if not path.is_file():
            raise DataError(f"image {path} does not exist; check the path (relative paths start from {Path.cwd()})")
        try:
            probe_image(path)
        except DataError as exc:
            raise DataError(f"cannot predict {path}: {exc}; pass a readable image file (JPEG, PNG, ...)") from None
    probs = predict_items(predictor, [(p, 0) for p in paths], workers=0)
    ranked = top_classes(probs, classes, topk)
    return [{"path": str(path), **r} for path, r in zip(paths, ranked, strict=True)]


def top_classes(probs: np.ndarray, classes: list[str], topk: int) -> list[dict]:
    """Per row of probabilities: ``label``, ``probability`` and ``topk`` (label, probability)."""
    k = min(topk, len(classes))
    results = []
    for row in probs:
        order = row.argsort()[::-1][:k]
        results.append(
            {
                "label": classes[order[0]],
                "probability": float(row[order[0]]),
                "topk": [{"label": classes[i], "probability": float(row[i])} for i in order],
            }
        )
    return results
