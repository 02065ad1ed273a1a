"""Decoding, augmentation seeds, the resumable sampler and the loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_image_folder
from modelcycle.config import DataSection
from modelcycle.data.datasets import EpochSampler, ImageDataset, make_loader, should_cache
from modelcycle.data.images import load_image, probe_image
from modelcycle.data.manifest import PreparedData
from modelcycle.data.prepare import prepare
from modelcycle.data.transforms import build_transform, normalisation
from modelcycle.errors import ConfigError, DataError

AUGMENT = {"image_size": 16, "hflip": True, "color_jitter": 0.4, "crop_scale": (0.3, 1.0), "workers": 0}


def _section(**kw) -> DataSection:
    return DataSection(**{**AUGMENT, **kw})


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b) -> bool:
    if len(a) != len(b):
        return False
    return all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))


# ---------------------------------------------------------------- sampler


def test_sampler_same_seed_same_order_and_seeds():
    a, b = EpochSampler(50, seed=7), EpochSampler(50, seed=7)
    first = list(a)
    assert first == list(b)
    assert sorted(i for i, _ in first) == list(range(50))  # a permutation
    assert len({s for _, s in first}) > 45  # each sample its own augmentation seed
    assert list(a) == first  # iterating again repeats the epoch


def test_sampler_epochs_and_seeds_differ():
    sampler = EpochSampler(50, seed=7)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert [i for i, _ in epoch0] != [i for i, _ in epoch1]
    assert [s for _, s in epoch0] != [s for _, s in epoch1]
    assert list(EpochSampler(50, seed=8)) != epoch0


def test_sampler_without_shuffle_keeps_order():
    assert [i for i, _ in EpochSampler(10, seed=1, shuffle=False)] == list(range(10))


@pytest.mark.parametrize("position", [0, 1, 17, 49, 50])
def test_sampler_resumed_at_position_yields_the_tail(position: int):
    sampler = EpochSampler(50, seed=3)
    sampler.set_epoch(2)
    whole = list(sampler)
    resumed = EpochSampler(50, seed=3)
    resumed.set_epoch(2, start=position)
    assert len(resumed) == 50 - position
    assert list(resumed) == whole[position:]


# ---------------------------------------------------------------- decoding


def test_rgb_and_greyscale_decode(tmp_path: Path):
    rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    grey = rgb[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")

    out = load_image(tmp_path / "rgb.png", 3)
    assert out.dtype == np.uint8 and out.shape == (10, 12, 3)
    assert np.array_equal(out, rgb)
    out = load_image(tmp_path / "grey.png", 1)
    assert out.shape == (10, 12, 1) and np.array_equal(out[:, :, 0], grey)
    # greyscale file read as RGB: three equal channels; RGB file read as greyscale: luminance
    out = load_image(tmp_path / "grey.png", 3)
    assert out.shape == (10, 12, 3) and all(np.array_equal(out[:, :, c], grey) for c in range(3))
    out = load_image(tmp_path / "rgb.png", 1)
    assert out.shape == (10, 12, 1)
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    assert np.array_equal(out[:, :, 0], expected)
    assert probe_image(tmp_path / "rgb.png") == (12, 10, "RGB")
    assert probe_image(tmp_path / "grey.png") == (12, 10, "L")


def test_palette_image_with_transparency_decodes_to_rgb(tmp_path: Path):
    image = Image.new("P", (8, 6), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    out = load_image(tmp_path / "p.png", 3)
    assert out.shape == (6, 8, 3) and (out[:, :, 0] == 255).all()


def test_exif_rotated_jpeg_is_turned_upright(tmp_path: Path):
    pixels = np.zeros((8, 16, 3), np.uint8)  # stored landscape, 16 wide x 8 high
    pixels[:, :4] = 255  # bright left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    with Image.open(path) as raw:
        stored = np.asarray(raw.convert("RGB"))
    assert stored.shape == (8, 16, 3)

    out = load_image(path, 3)
    assert out.shape == (16, 8, 3)  # portrait, as a photo viewer shows it
    assert np.array_equal(out, np.rot90(stored, k=-1))  # clockwise
    assert out[:4].mean() > 200 and out[-4:].mean() < 50  # the bright edge is now at the top
    assert probe_image(path)[:2] == (8, 16)


def test_undecodable_file_raises_data_error_with_path(tmp_path: Path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(DataError) as info:
        load_image(bad, 3)
    assert str(bad) in str(info.value) and "rejected.txt" in str(info.value)
    with pytest.raises(DataError, match="empty file"):
        (tmp_path / "zero.jpg").write_bytes(b"")
        probe_image(tmp_path / "zero.jpg")


# ---------------------------------------------------------------- augmentation


@pytest.fixture
def items(image_folder: Path, tmp_path: Path) -> tuple[PreparedData, list]:
    prepare(image_folder, tmp_path / "data", val=0.2)
    data = PreparedData.open(tmp_path / "data")
    return data, data.split("train")


def test_same_seed_same_augmentation_other_seed_differs(items):
    data, train = items
    dataset = ImageDataset(train, 3, build_transform(_section(), train=True), 16, cache=False)
    a, label_a = dataset[(3, 1234)]
    b, label_b = dataset[(3, 1234)]
    assert np.array_equal(a, b) and label_a == label_b == train[3][1]
    others = [dataset[(3, seed)][0] for seed in range(1, 6)]
    assert any(not np.array_equal(a, o) for o in others)
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8


def test_greyscale_augmentation_keeps_one_channel(tmp_path: Path):
    src = make_image_folder(tmp_path / "grey", mode="L", size=20)
    prepare(src, tmp_path / "data")
    data = PreparedData.open(tmp_path / "data")
    loader = make_loader(data.split("train"), data, _section(), data.channels, 8, train=True, seed=0)
    images, labels = next(iter(loader))
    assert data.channels == 1
    assert images.shape == (8, 1, 16, 16)


# ---------------------------------------------------------------- loaders


def test_loader_shapes_dtypes_and_normalisation(items):
    data, train = items
    loader = make_loader(train, data, _section(), 3, 8, train=True, seed=0)
    batches = _batches(loader)
    assert [len(y) for _, y in batches] == [8, 8, 8, 6]
    images, labels = batches[0]
    assert images.shape == (8, 3, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1, 2}
    assert images.is_contiguous()
    # ImageNet normalisation of 0..255 pixels: roughly -2.2..2.7
    assert images.min() >= -2.2 and images.max() <= 2.7
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(label for _, label in train)


def test_validation_loader_is_plain_and_exact(items):
    data, train = items
    cfg = _section()
    loader = make_loader(train, data, cfg, 3, 7, train=False)
    batches = _batches(loader)
    assert [len(y) for _, y in batches] == [7, 7, 7, 7, 2]  # no drop_last, no shuffle
    assert torch.cat([y for _, y in batches]).tolist() == [label for _, label in train]
    # images are 16x16 already: validation pixels are the file's pixels, exactly
    pixels = loader.collate_fn.denormalise(batches[0][0])
    assert np.array_equal(pixels[0], load_image(train[0][0], 3))
    assert _same(batches, _batches(loader))


def test_validation_resizes_and_centre_crops(tmp_path: Path):
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "wide.png")
    data = PreparedData(tmp_path, ["a"], {})
    loader = make_loader([(tmp_path / "wide.png", 0)], data, _section(image_size=12), 3, 4, train=False)
    images, _ = next(iter(loader))
    assert images.shape == (1, 3, 12, 12)


def test_train_loader_same_seed_same_batches_epochs_differ(items):
    data, train = items
    first = make_loader(train, data, _section(), 3, 8, train=True, seed=5)
    second = make_loader(train, data, _section(), 3, 8, train=True, seed=5)
    epoch0 = _batches(first)
    assert _same(epoch0, _batches(second))
    assert _same(epoch0, _batches(first))  # a loader replays its epoch until told otherwise
    first.sampler.set_epoch(1)
    assert not _same(epoch0, _batches(first))
    other = make_loader(train, data, _section(), 3, 8, train=True, seed=6)
    assert not _same(epoch0, _batches(other))


def test_train_loader_resumed_mid_epoch_gives_the_remaining_batches(items):
    data, train = items
    loader = make_loader(train, data, _section(), 3, 8, train=True, seed=5)
    loader.sampler.set_epoch(3)
    whole = _batches(loader)
    loader.sampler.set_epoch(3, start=16)  # two batches of 8 done
    assert _same(_batches(loader), whole[2:])


def test_cache_on_and_off_give_the_same_tensors(items):
    data, train = items
    cached = make_loader(train, data, _section(cache=True), 3, 8, train=True, seed=1)
    uncached = make_loader(train, data, _section(cache=False), 3, 8, train=True, seed=1)
    assert cached.dataset.cache is not None and uncached.dataset.cache is None
    assert _same(_batches(cached), _batches(uncached))
    for loader in (cached, uncached):
        loader.sampler.set_epoch(1)
    assert _same(_batches(cached), _batches(uncached))
    val_c = make_loader(train, data, _section(cache=True), 3, 8, train=False)
    val_u = make_loader(train, data, _section(cache=False), 3, 8, train=False)
    assert _same(_batches(val_c), _batches(val_u))


def test_worker_processes_give_the_same_batches(items):
    data, train = items
    inline = make_loader(train, data, _section(), 3, 8, train=True, seed=2, workers=0)
    forked = make_loader(train, data, _section(), 3, 8, train=True, seed=2, workers=1)
    assert forked.num_workers == 1
    assert _same(_batches(inline), _batches(forked))


def test_auto_cache_follows_the_memory_budget(items):
    data, train = items
    assert should_cache(_section(cache="auto"), data, len(train)) is True
    assert should_cache(_section(cache="auto", cache_max_mb=0), data, len(train)) is False
    assert should_cache(_section(cache=False), data, len(train)) is False
    assert should_cache(_section(cache=True, cache_max_mb=0), data, len(train)) is True


def test_missing_image_in_loader_is_a_data_error(items, tmp_path: Path):
    data, train = items
    loader = make_loader([(tmp_path / "gone.png", 0)], data, _section(cache=False), 3, 1, train=False)
    with pytest.raises(DataError, match="gone.png"):
        next(iter(loader))


def test_mean_std_must_match_channels():
    assert normalisation(DataSection(), 1) == ([0.5], [0.5])
    with pytest.raises(ConfigError, match="3 value"):
        normalisation(DataSection(mean=[0.5], std=[0.5]), 3)


def test_sixteen_bit_greyscale_png_is_scaled_not_saturated(tmp_path: Path):
    # 16-bit PNGs (scanners, microscopes, medical images) hold 0..65535; 8-bit is 0..255
    pixels = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode.startswith("I")
    out = load_image(path, 1)[:, :, 0].astype(int)
    expected = np.round(pixels / 257).astype(int)
    worst = int(np.abs(out - expected).max())
    assert worst <= 1, f"first row decoded as {out[0].tolist()}, expected {expected[0].tolist()}"
