"""Datasets and loaders for image classification.

Reproducibility does not depend on worker count or on where a run was resumed: the sampler
hands each sample its own augmentation seed, derived from (seed, epoch, position), so the same
epoch produces the same batches whether it ran straight through or restarted mid-way.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import weakref
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
    """Seeded shuffle per epoch, yielding ``(index, augmentation_seed)``, resumable at any position.

    With several processes, every rank draws the same permutation (from seed and epoch only) and
    cuts each *global* batch of ``global_batch`` positions into ``world`` contiguous shards; rank
    r takes shard r. The ranks' batches, put side by side, are the single-process batches, and a
    sample's augmentation seed belongs to its global position, so an N-process epoch sees the
    same images, augmented the same way, as a 1-process epoch. ``start`` counts global positions,
    which is what lets a run resume on a different number of processes.
    """

    def __init__(
        self, size: int, seed: int, shuffle: bool = True, global_batch: int | None = None, rank: int = 0, world: int = 1
    ):
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.global_batch = global_batch or max(size, 1)
        self.rank, self.world = rank, world
        self.epoch = 0
        self.start = 0
        # a lone last sample would break BatchNorm in training: the epoch ends before it
        self.end = size - 1 if size % self.global_batch == 1 else size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if self.world > 1 and start % self.global_batch:
            raise ValueError(f"start={start} is not at a global batch boundary ({self.global_batch})")
        self.epoch, self.start = epoch, start

    @property
    def batches_per_epoch(self) -> int:
        """Global batches in an epoch: the same on every rank, and the same as with one process."""
        return -(-self.end // self.global_batch)

    def order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
        seeds = rng.integers(0, 2**31 - 1, self.size)
        return order, seeds

    def _share(self, first: int) -> tuple[int, int, int]:
        """This rank's positions [lo, hi) of the global batch starting at ``first``, and its size."""
        length = min(self.global_batch, self.end - first)
        lo = first + self.rank * length // self.world
        return lo, first + (self.rank + 1) * length // self.world, length

    def loss_weight(self, batch: int) -> float:
        """What this rank's mean loss on global batch ``batch`` is multiplied by so that DDP's
        average over ranks is the mean over the whole batch: ``world * shard / batch``. It is 1
        for every full batch; only a short last batch splits unevenly. A rank with no sample
        left gets a stand-in with weight 0 (all ranks must step together)."""
        lo, hi, length = self._share(batch * self.global_batch)
        return self.world * (hi - lo) / length

    def _positions(self) -> Iterator[int]:
        for first in range(self.start, self.end, self.global_batch):
            lo, hi, _ = self._share(first)
            yield from range(lo, hi) if hi > lo else (first,)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self.order(self.epoch)
        for position in self._positions():
            yield int(order[position]), int(seeds[position])

    def __len__(self) -> int:
        return sum(1 for _ in self._positions())


class ShardedBatches(Sampler):
    """Validation batches for one rank: the single-process batches dealt out round-robin, so
    every image is counted exactly once (no padding, no duplicates in the metrics).

    Ranks with one batch fewer than the others end with a one-image stand-in that the engine
    runs but does not count (``counted`` is the number of real batches): sharded (FSDP) models
    need every rank to run the same number of forward passes.
    """

    def __init__(self, size: int, batch_size: int, rank: int, world: int):
        starts = range(0, size, batch_size)
        self.batches = [list(range(s, min(s + batch_size, size))) for s in starts][rank::world]
        self.counted = len(self.batches)
        self.batches += [[0]] * (-(-len(starts) // world) - self.counted)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def default_workers() -> int:
    """One process per spare core (the main process trains), at least one, at most eight; the
    cores are shared by the training processes on this machine (``LOCAL_WORLD_SIZE``, torchrun)."""
    cores = (os.cpu_count() or 2) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, cores - 1))


# loaders with worker processes, for the shutdown at exit below
_with_workers: weakref.WeakSet[DataLoader] = weakref.WeakSet()


def shutdown_workers(loader: DataLoader) -> None:
    """Stop a loader's worker processes now (a later ``iter(loader)`` starts new ones)."""
    iterator = getattr(loader, "_iterator", None)
    loader._iterator = None
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


@atexit.register  # registered after torch's own exit hook, so it runs before it
def _shutdown_at_exit() -> None:
    """Persistent workers live as long as their loader. After an uncaught exception the
    traceback keeps the loader alive into interpreter exit, where torch no longer shuts workers
    down and multiprocessing terminates them with SIGTERM, which they ignore (see _worker_init),
    then waits for them forever: a failed run that never exits. Shut them down first."""
    for loader in list(_with_workers):
        with contextlib.suppress(Exception):  # at exit, one loader must not keep the others alive
            shutdown_workers(loader)


def _worker_init(_: int) -> None:
    # Ctrl-C goes to the whole process group, and torchrun sends SIGINT/SIGTERM to each worker's
    # group: only the main process decides how to stop (it shuts the loader workers down itself).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def should_cache(cfg: DataSection, data: PreparedData, count: int) -> bool:
    if cfg.cache != "auto":
        return bool(cfg.cache)
    width = data.stats.get("width", {}).get("median", 256)
    height = data.stats.get("height", {}).get("median", 256)
    # draft decoding keeps at most ~2x the training size of a JPEG
    side = min(max(width, height), 2 * cfg.image_size)
    estimate = count * side * side * data.channels
    return estimate <= cfg.cache_max_mb * 2**20


def batching(size: int, batch_size: int, train: bool, seed: int, rank: int = 0, world: int = 1) -> dict:
    """DataLoader arguments for process ``rank`` of ``world``, for every task. Training draws
    through an :class:`EpochSampler` with ``batch_size`` as the global batch (each rank loads its
    share); validation with ``world > 1`` deals whole ``batch_size`` batches out to the ranks."""
    if train:
        assert batch_size % world == 0, "the global batch must split evenly (distributed.split_batch checks it)"
        sampler = EpochSampler(size, seed, shuffle=True, global_batch=batch_size, rank=rank, world=world)
        return {"sampler": sampler, "batch_size": batch_size // world}
    if world > 1:
        return {"batch_sampler": ShardedBatches(size, batch_size, rank, world)}
    return {"batch_size": batch_size}


def memory_loader(
    dataset: Dataset, collate, batch_size: int, train: bool, seed: int = 0, rank: int = 0, world: int = 1
) -> DataLoader:
    """A DataLoader over rows already in memory (token ids): the same resumable order as
    :func:`batching` gives every task, and no worker processes, since collating a batch takes
    microseconds and a worker would cost more than it saves."""
    return DataLoader(
        dataset,
        **batching(len(dataset), batch_size, train, seed, rank, world),
        num_workers=0,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
    )


def make_loader(
    items: list[tuple[Path, int]],
    data: PreparedData,
    cfg: DataSection,
    channels: int,
    batch_size: int,
    train: bool,
    seed: int = 0,
    workers: int | None = None,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """A DataLoader over ``items`` for process ``rank`` of ``world`` (see :func:`batching`)."""
    transform = build_transform(cfg, train=train)
    dataset = ImageDataset(items, channels, transform, cfg.image_size, should_cache(cfg, data, len(items)))
    workers = cfg.workers if workers is None else workers
    workers = default_workers() if workers is None else workers
    loader = DataLoader(
        dataset,
        **batching(len(dataset), batch_size, train, seed, rank, world),
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        collate_fn=Collate(*normalisation(cfg, channels)),
        worker_init_fn=_worker_init if workers > 0 else None,
        # our own generator: creating an iterator must not draw from the global RNG, or a resumed
        # run would see different dropout masks than an uninterrupted one
        generator=torch.Generator().manual_seed(seed),
    )
    if workers > 0:
        _with_workers.add(loader)
    return loader
