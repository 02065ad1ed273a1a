"""Bundled demo data: real datasets that ship with the dependencies, so demos run offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DATASETS = {
    "digits": "scikit-learn's 1,797 handwritten digits (8x8 greyscale), one folder per class",
    "pydoc-topics": "paragraphs of Python's reference docs labelled with their topic group, as train/val JSONL",
    "pydocs": "Python's docs as a pretraining corpus, chat instructions and preference pairs (for `lm`)",
}


def write_dataset(name: str, out: str | Path) -> Path:
    """Write the bundled dataset ``name`` (a key of DATASETS) into ``out``."""
    if name == "pydoc-topics":
        from modelcycle.data.pydoc_topics import write_pydoc_topics

        write_pydoc_topics(out)
        return Path(out)
    if name == "pydocs":
        from modelcycle.data.pydocs import write_pydocs

        write_pydocs(out)
        return Path(out)
    return write_digits(out)


def write_digits(out: str | Path) -> Path:
    """Write scikit-learn's digits as PNG files in class folders ``out/0 ... out/9``.

    The layout is the one users bring (flower_photos/daisy/*.jpg), so the demo exercises the same
    prepare -> train path as real data. File names carry the sample's index in the original set.
    """
    from sklearn.datasets import load_digits

    out = Path(out)
    digits = load_digits()
    # 0..16 ink levels -> 0..255 grey, as a scanner would give
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    for label in range(10):
        (out / str(label)).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(images, digits.target, strict=True)):
        Image.fromarray(image).save(out / str(label) / f"{index:04d}.png")
    return out
