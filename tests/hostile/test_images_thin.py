"""Issue 14, item 1: a tiny, very thin image (a 2 KB PNG of 1 x 1,000,000 pixels) passed the pixel
limit, then had its shorter side resized up to image_size: gigabytes and minutes per image. Every
path that decodes an image (uploads, ``predict``, training data, ``prepare``) now refuses one
whose aspect ratio or resized size is over the limit, from its header, before decoding it."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from PIL import Image

import modelcycle
from helpers import make_image_folder, tiny_overrides
from modelcycle.data.images import MAX_ASPECT, MAX_RESIZED_PIXELS, decode_bytes, load_image, probe_image
from modelcycle.errors import DataError


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "PNG")
    return buffer.getvalue()


def write_png(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(width, height))
    return path


@pytest.mark.parametrize(("width", "height", "ratio"), [(1, 1_000_000, "1,000,000:1"), (10_000_000, 1, "10,000,000:1")])
def test_a_thin_upload_is_refused_from_its_header(width, height, ratio):
    data = png(width, height)
    assert len(data) < 20_000  # tiny files: the limit on the file's bytes never saw them
    started = time.perf_counter()
    with pytest.raises(DataError) as caught:
        decode_bytes(data, 3, min_size=16, max_pixels=40_000_000)
    message = str(caught.value)
    assert f"{width:,}x{height:,}" in message and f"aspect ratio {ratio}" in message
    assert f"limit of {MAX_ASPECT}:1" in message
    assert time.perf_counter() - started < 1.0  # nothing decoded


def test_the_limit_is_on_the_ratio_not_on_thinness():
    at_limit = decode_bytes(png(2, 2 * MAX_ASPECT), 1, min_size=16)
    assert at_limit.shape == (2 * MAX_ASPECT, 2, 1)
    with pytest.raises(DataError, match=r"aspect ratio 64\.5:1"):
        decode_bytes(png(2, 2 * MAX_ASPECT + 1), 1, min_size=16)
    assert decode_bytes(png(10_000, 1_000), 1, min_size=16).shape == (1_000, 10_000, 1)  # a panorama


def test_the_resized_size_is_bounded_too():
    # 64:1 is allowed, but at a 1,000 px image_size the shorter-side resize would be 64 M pixels
    with pytest.raises(DataError) as caught:
        decode_bytes(png(10, 640), 1, min_size=1000)
    assert f"{MAX_RESIZED_PIXELS:,}" in str(caught.value) and "1000 px" in str(caught.value)
    assert decode_bytes(png(10, 640), 1, min_size=16).shape == (640, 10, 1)


def test_prepare_rejects_a_thin_image_with_the_reason(tmp_path: Path):
    src = make_image_folder(tmp_path / "images")
    write_png(src / "class_0" / "thin.png", 1, 100_000)
    result = modelcycle.prepare(src, tmp_path / "data", val=0.2, seed=0)
    rejected = (tmp_path / "data" / "rejected.txt").read_text()
    assert "thin.png" in rejected and "aspect ratio 100,000:1" in rejected
    assert "thin.png" not in (tmp_path / "data" / "train.txt").read_text()
    assert result is not None
    with pytest.raises(DataError, match="aspect ratio"):
        probe_image(src / "class_0" / "thin.png")


def test_predict_refuses_a_thin_image(trained: Path, tmp_path: Path):
    thin = write_png(tmp_path / "thin.png", 100_000, 1)
    with pytest.raises(DataError) as caught:
        modelcycle.predict(trained, [thin])
    assert "thin.png" in str(caught.value) and "aspect ratio 100,000:1" in str(caught.value)


def test_training_data_refuses_a_thin_image(tmp_path: Path):
    thin = write_png(tmp_path / "thin.png", 1, 100_000)
    with pytest.raises(DataError) as caught:
        load_image(thin, 3, min_size=16)
    assert str(thin) in str(caught.value) and "aspect ratio 100,000:1" in str(caught.value)
    # a manifest written before this check (or by hand) reaches the loader: training stops with the reason
    src = make_image_folder(tmp_path / "images")
    modelcycle.prepare(src, tmp_path / "data", val=0.2, seed=0)
    with (tmp_path / "data" / "train.txt").open("a") as manifest:
        manifest.write(f"{thin}\t0\n")
    config = modelcycle.load_config(None, tiny_overrides(tmp_path / "data", tmp_path / "runs", train__epochs=1))
    with pytest.raises(DataError, match="aspect ratio 100,000:1"):
        modelcycle.train(config, progress=False)
