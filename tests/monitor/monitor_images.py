"""Shifted copies of the digits and PNG encoding, for the monitoring tests. Not in conftest.py:
`from conftest import` finds whichever conftest pytest imported last (tests/serve's, when both
folders run), so helpers the test modules import live under a name of their own."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def shift(kind: str, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "inverted":
        return 255 - image
    if kind == "noised":
        return np.clip(image + rng.normal(0, 60, image.shape), 0, 255).astype(np.uint8)
    if kind == "rotated":
        return np.ascontiguousarray(np.rot90(image))
    return image


def b64_png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()
