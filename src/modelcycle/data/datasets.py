"""Datasets and loaders for image classification.

Reproducibility does not depend on worker count or on where a run was resumed: the sampler
hands each sample its own augmentation seed, derived from (seed, epoch, position), so the same
epoch produces the same batches whether it ran straight through or restarted mid-way.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from modelcycle.config import DataSection
from modelcycle.data.images import load_image
from modelcycle.data.manifest import PreparedData
from modelcycle.data.transforms import Collate, build_transform, normalisation
from modelcycle.progress import progress_bar


class ImageDataset(Dataset):
    def __init__(self, items: list[tuple[Path, int]], channels: int, transform, min_size: int, cache: bool):
        self.items = items
        self.channels = channels
        self.transform = transform
        self.min_size = min_size
        self.cache: list[np.ndarray] | None = self._decode_all() if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def _decode_all(self) -> list[np.ndarray]:
        # decoded in the main process before workers fork, so they share the pages
        with (
            ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool,
            progress_bar("caching images", len(self.items)) as advance,
        ):
            out = []
            for image in pool.map(self.decode, range(len(self.items))):
                out.append(image)
                advance(1)
        return out

    def decode(self, index: int) -> np.ndarray:
        if getattr(self, "cache", None) is not None:
            return self.cache[index]
        return load_image(self.items[index][0], self.channels, self.min_size)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[np.ndarray, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is not None:
            self.transform.set_random_seed(seed)
        image = self.transform(image=self.decode(index))["image"]
        if image.ndim == 2:
            image = image[:, :, None]
        return image, self.items[index][1]


class EpochSampler(Sampler):
    """Seeded shuffle per epoch, yielding ``(index, augmentation_seed)``, resumable at any position."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
        seeds = rng.integers(0, 2**31 - 1, self.size)
        return order, seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self.order(self.epoch)
        for position in range(self.start, self.size):
            yield int(order[position]), int(seeds[position])

    def __len__(self) -> int:
        return self.size - self.start


def default_workers() -> int:
    """One process per spare core (the main process trains), at least one, at most eight."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _worker_init(_: int) -> None:
    # Ctrl-C goes to the whole process group; only the main process decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def should_cache(cfg: DataSection, data: PreparedData, count: int) -> bool:
    if cfg.cache != "auto":
        return bool(cfg.cache)
    width = data.stats.get("width", {}).get("median", 256)
    height = data.stats.get("height", {}).get("median", 256)
    # draft decoding keeps at most ~2x the training size of a JPEG
    side = min(max(width, height), 2 * cfg.image_size)
    estimate = count * side * side * data.channels
    return estimate <= cfg.cache_max_mb * 2**20


def make_loader(
    items: list[tuple[Path, int]],
    data: PreparedData,
    cfg: DataSection,
    channels: int,
    batch_size: int,
    train: bool,
    seed: int = 0,
    workers: int | None = None,
) -> DataLoader:
    """A DataLoader over ``items``; training loaders carry an :class:`EpochSampler`."""
    transform = build_transform(cfg, train=train)
    dataset = ImageDataset(items, channels, transform, cfg.image_size, should_cache(cfg, data, len(items)))
    workers = cfg.workers if workers is None else workers
    workers = default_workers() if workers is None else workers
    sampler = EpochSampler(len(dataset), seed, shuffle=True) if train else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        # a lone last sample would break BatchNorm in training
        drop_last=train and len(dataset) % batch_size == 1,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        collate_fn=Collate(*normalisation(cfg, channels)),
        worker_init_fn=_worker_init if workers > 0 else None,
        # our own generator: creating an iterator must not draw from the global RNG, or a resumed
        # run would see different dropout masks than an uninterrupted one
        generator=torch.Generator().manual_seed(seed),
    )
