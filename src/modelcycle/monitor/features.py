"""What the monitor measures about each input and each answer.

Input features are computed from the preprocessed batch the model itself receives (resized,
cropped and normalised exactly as `evaluate` and the server feed it), turned back into 0..1
pixel values, so the reference profile and the served traffic are measured the same way and a
change of preprocessing shows up as drift instead of hiding it. They are cheap (a few numpy
reductions over a batch) because the server computes them for every logged image.

One input feature comes from the file instead: ``size``, the side of a square of the image's
area as the client sent it, sqrt(width * height) in pixels (the resized tensor has forgotten it).
It is read from the file's header, where the bytes are decoded, so an image that arrives as a
tensor (``/v2`` infer with ``input``) has none: NULL in the log, left out of that window's test.

Output features come from the logits: the predicted class, the confidence (max softmax) and the
embedding coordinates (see :mod:`modelcycle.monitor.profile` for why those come from the logits).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import softmax

# named so that an alert says what changed in words an operator can act on
GREY_FEATURES = ("brightness", "contrast", "sharpness", "horizontal_edges")
COLOUR_FEATURES = ("red", "green", "blue")
SIZE = "size"  # from the file's header, not the tensor (see the module docstring)


def image_side(width: int, height: int) -> float:
    """The ``size`` feature: the geometric mean of the sides, so a 4x upscale reads as 4x."""
    return math.sqrt(width * height)


def pixel_scale(preprocessing: dict) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per channel, shaped to undo the normalisation of a (N, C, H, W) batch."""
    mean = np.asarray(preprocessing["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(preprocessing["std"], np.float32).reshape(1, -1, 1, 1)
    return mean, std


def input_features(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, np.ndarray]:
    """(N, C, H, W) normalised float images -> one value per image and feature.

    brightness/contrast: mean and standard deviation of the pixels; sharpness: mean absolute
    difference between neighbouring pixels (noise raises it, blur and upscaled small images lower
    it); horizontal_edges: the share of that gradient that runs vertically, i.e. from horizontal
    edges (a rotated or transposed picture moves it); red/green/blue: channel means.
    """
    pixels = images * std + mean  # back to 0..1
    n = len(pixels)
    flat = pixels.reshape(n, -1)
    dy = np.abs(np.diff(pixels, axis=2)).reshape(n, -1).mean(1)
    dx = np.abs(np.diff(pixels, axis=3)).reshape(n, -1).mean(1)
    total = dx + dy
    out = {
        "brightness": flat.mean(1),
        "contrast": flat.std(1),
        "sharpness": total,
        "horizontal_edges": np.divide(dy, total, out=np.full_like(total, 0.5), where=total > 1e-8),
    }
    if pixels.shape[1] == 3:
        channel_means = pixels.reshape(n, 3, -1).mean(2)
        out |= dict(zip(COLOUR_FEATURES, channel_means.T, strict=True))
    return {k: v.astype(np.float64) for k, v in out.items()}


def output_features(logits: np.ndarray, to_embedding: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Predicted class, confidence, and the embedding's coordinates when the profile has its map."""
    probs = softmax(logits.astype(np.float64), axis=1)
    out = {"label": probs.argmax(1), "confidence": probs.max(1)}
    if to_embedding is not None:
        matrix, offset = to_embedding
        out["embedding"] = logits.astype(np.float64) @ matrix.T + offset
    return out


def to_uint8_images(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Normalised (N, C, H, W) -> uint8 (N, H, W, C): the picture the model saw, for keep_inputs."""
    pixels = np.clip((images * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return pixels.transpose(0, 2, 3, 1)
