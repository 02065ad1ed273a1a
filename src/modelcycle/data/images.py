"""Decoding image files into arrays, the one place that knows about Pillow."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from modelcycle.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

# Truncated files must fail loudly, not decode as half-grey pictures.
Image.LOAD_TRUNCATED_IMAGES = False

# Every caller resizes the shorter side to the model's image_size and centre-crops a square, so
# the resize allocates image_size x (image_size x ratio) pixels: a 2 KB PNG of 1 x 1,000,000 became
# gigabytes. Panoramas are about 10:1, receipts and banners 20 to 30:1; a picture more than 64 times
# as long as it is wide is a strip of which the model would see 1/64th or less anyway.
MAX_ASPECT = 64
# The resized picture (before the centre crop), checked as well: 2**24 pixels is 50 MB in RGB, enough
# for image_size 512 at the full 64:1 ratio. It bounds the memory one image can take whatever
# image_size a package has.
MAX_RESIZED_PIXELS = 2**24


def probe_image(source: Path | bytes) -> tuple[int, int, str]:
    """Fully decode ``source`` (a file, or its bytes already read) and return width, height, mode.

    A header check misses truncation. Raises DataError with the reason when the file is empty,
    not an image, or damaged.
    """
    with decoded_image(source) as img:
        return (*upright_size(img), img.mode)


@contextmanager
def decoded_image(source: Path | bytes) -> Iterator[Image.Image]:
    """``source`` opened and fully decoded, the shape limits checked on its header first; every
    way it can fail (also in the caller's block) becomes a DataError with the reason."""
    try:
        if (len(source) if isinstance(source, bytes) else source.stat().st_size) == 0:
            raise DataError("empty file (0 bytes)")
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            check_shape(*img.size)  # before any pixel is decoded
            img.load()
            yield img
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError("not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"image refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"damaged image: {exc}") from None


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied (5 to 8 swap the sides)."""
    return (img.height, img.width) if _rotated(img) else img.size


def check_shape(width: int, height: int, max_pixels: int | None = None, min_size: int | None = None) -> None:
    """Raise DataError when an image of ``width`` x ``height`` must not be decoded or resized:
    longer side over :data:`MAX_ASPECT` times the shorter, over ``max_pixels`` pixels, or, with
    its shorter side resized to ``min_size``, over :data:`MAX_RESIZED_PIXELS`. Cheap: callers run
    it on the header, before decoding, and on the decoded array, before resizing."""
    if width < 1 or height < 1:
        raise DataError(f"image is {width}x{height}: it has no pixels")
    long, short = max(width, height), min(width, height)
    if long > MAX_ASPECT * short:
        ratio = f"{long // short:,}" if long % short == 0 else f"{long / short:,.1f}"
        raise DataError(
            f"image is {width:,}x{height:,}: aspect ratio {ratio}:1 is over the limit of {MAX_ASPECT}:1; "
            "crop it (or pad it) to a less elongated picture"
        )
    if max_pixels and width * height > max_pixels:
        raise DataError(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
            "send a smaller image"
        )
    if min_size:
        resized = min_size * -(-long * min_size // short)  # shorter side to min_size, rounded up
        if resized > MAX_RESIZED_PIXELS:
            raise DataError(
                f"image is {width:,}x{height:,}: with its shorter side resized to the model's {min_size} px it "
                f"would be {resized:,} pixels, over the limit of {MAX_RESIZED_PIXELS:,}; crop it to a less "
                "elongated picture"
            )


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
    except DataError as exc:
        raise DataError(
            f"image {path}: {exc}. Remove it or run `modelcycle prepare` again to list refused files in rejected.txt"
        ) from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {path} refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"cannot decode image {path}: {exc}. Remove it or run `modelcycle prepare` again to list "
            "unreadable files in rejected.txt"
        ) from None


def decode_bytes(data: bytes, channels: int, min_size: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """:func:`load_image` for an uploaded file. ``max_pixels`` and the shape limits of
    :func:`check_shape` are checked on the header, before any pixel is decoded, so a
    decompression bomb or a 1 x 1,000,000 strip costs nothing."""
    return decode_sized(data, channels, min_size, max_pixels)[0]


def decode_sized(
    data: bytes, channels: int, min_size: int | None = None, max_pixels: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`decode_bytes` and the (width, height) of the file as sent, read from its header:
    the array may be smaller (JPEG draft mode), the monitor wants what the client sent."""
    if not data:
        raise DataError("empty image (0 bytes)")
    return _decode_checked(io.BytesIO(data), channels, min_size, max_pixels)


def decode_file(path: Path, channels: int, min_size: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """:func:`decode_bytes` for a file on disk, with the same limits and reasons (no path, no
    advice: the caller knows what the file was for). Pillow reads it lazily, so a large file
    that is not an image is refused from its first bytes, not read whole."""
    try:
        if path.stat().st_size == 0:
            raise DataError("empty file (0 bytes)")
    except OSError as exc:
        raise DataError(f"cannot read the file: {exc.strerror or exc}") from None
    return _decode_checked(path, channels, min_size, max_pixels)[0]


def _decode_checked(
    source: io.BytesIO | Path, channels: int, min_size: int | None, max_pixels: int | None
) -> tuple[np.ndarray, tuple[int, int]]:
    try:
        with Image.open(source) as img:
            width, height = img.size
            check_shape(width, height, max_pixels, min_size)
            return _to_array(img, channels, min_size), (width, height)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError("not an image Pillow can read (send PNG, JPEG, WebP, BMP, GIF or TIFF)") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"image refused as a decompression bomb: {exc}") from None
    except (PermissionError, IsADirectoryError) as exc:
        raise DataError(f"cannot read the file: {exc.strerror}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"damaged image: {exc}") from None


def _to_array(img: Image.Image, channels: int, min_size: int | None) -> np.ndarray:
    """Decode ``img``; the shape limits are checked on its header first and on the decoded
    array again (what the transform will resize), whatever the header said."""
    check_shape(*img.size, min_size=min_size)
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
    check_shape(array.shape[1], array.shape[0], min_size=min_size)
    return array
