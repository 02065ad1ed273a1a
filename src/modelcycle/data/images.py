"""Decoding image files into arrays, the one place that knows about Pillow."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from modelcycle.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

# Truncated files must fail loudly, not decode as half-grey pictures.
Image.LOAD_TRUNCATED_IMAGES = False


def probe_image(path: Path) -> tuple[int, int, str]:
    """Fully decode ``path`` (a header check misses truncation) and return width, height, mode.

    Raises DataError with the reason when the file is empty, not an image, or damaged.
    """
    try:
        if path.stat().st_size == 0:
            raise DataError("empty file (0 bytes)")
        with Image.open(path) as img:
            img.load()
            width, height = ImageOps.exif_transpose(img).size if _rotated(img) else img.size
            return width, height, img.mode
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"damaged image: {exc}") from None


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, no pixel decoded. EXIF rotation is ignored: it
    swaps the sides, not the area."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read the header of image {path}: {exc}") from None


def _rotated(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # orientations that swap w/h
    except Exception:  # noqa: BLE001 - a broken EXIF block must not reject a decodable image
        return False


def load_image(path: Path, channels: int, min_size: int | None = None) -> np.ndarray:
    """Decode to an HxWxC uint8 array with ``channels`` 1 or 3, EXIF rotation applied.

    ``min_size`` lets JPEG decode at a reduced scale (Pillow's draft mode) when the picture is at
    least twice that size: a large photo then decodes several times faster with no visible loss
    at the training resolution.
    """
    try:
        with Image.open(path) as img:
            return _to_array(img, channels, min_size)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"cannot decode image {path}: {exc}. Remove it or run `modelcycle prepare` again to list "
            "unreadable files in rejected.txt"
        ) from None


def decode_bytes(data: bytes, channels: int, min_size: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """:func:`load_image` for an uploaded file. ``max_pixels`` is checked on the header, before
    any pixel is decoded, so a decompression bomb costs nothing."""
    return decode_sized(data, channels, min_size, max_pixels)[0]


def decode_sized(
    data: bytes, channels: int, min_size: int | None = None, max_pixels: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`decode_bytes` and the (width, height) of the file as sent, read from its header:
    the array may be smaller (JPEG draft mode), the monitor wants what the client sent."""
    if not data:
        raise DataError("empty image (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if max_pixels and width * height > max_pixels:
                raise DataError(
                    f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
                    "send a smaller image"
                )
            return _to_array(img, channels, min_size), (width, height)
    except UnidentifiedImageError:
        raise DataError("not an image Pillow can read (send PNG, JPEG, WebP, BMP, GIF or TIFF)") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"image refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"damaged image: {exc}") from None


def _to_array(img: Image.Image, channels: int, min_size: int | None) -> np.ndarray:
    mode = "L" if channels == 1 else "RGB"
    if min_size and img.format == "JPEG":
        img.draft(mode, (min_size * 2, min_size * 2))
    if img.getexif().get(0x0112, 1) != 1:  # exif_transpose copies even when upright
        img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I"):  # 16-bit greyscale: scale to 8 bit; convert() would clip
        wide = np.asarray(img, dtype=np.float32)
        img = Image.fromarray(np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8))
    if img.mode != mode:
        img = img.convert("RGBA").convert(mode) if "transparency" in img.info else img.convert(mode)
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array
