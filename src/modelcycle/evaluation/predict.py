"""``modelcycle predict`` for image classifiers: top-k classes with probabilities for each file
named (files, folders, globs), run in batches.

Each file is answered or gets an error of its own (missing, not an image, damaged, truncated,
over the server's size limits): one bad file among thousands must not cost the answers for the
others. Files are decoded in a small thread pool, a batch ahead of the model: Pillow and OpenCV
release the GIL while they decode and resize, and threads cost nothing to start, where a
DataLoader starts its worker processes on every call (benchmarks/bench_predict.py compares both).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from modelcycle.config import ServeSection
from modelcycle.data.image_files import NamedFile, expand_image_args
from modelcycle.data.images import decode_file
from modelcycle.data.transforms import Collate, build_transform, normalisation
from modelcycle.errors import DataError
from modelcycle.evaluation.inference import data_section
from modelcycle.export.runtime import Predictor, load_predictor
from modelcycle.progress import progress_bar

DEFAULT_BATCH_SIZE = 32
# decoding threads: enough to overlap decoding with the model, few enough not to fight the model's
# own threads for the cores (benchmarks/bench_predict.py compares 1 with this)
DECODE_THREADS = min(4, os.cpu_count() or 1)
# what `serve` refuses in an upload (serve.max_pixels), checked on the header before decoding
MAX_PIXELS: int = ServeSection.model_fields["max_pixels"].default


def iter_predict(
    run: str | Path,
    inputs: list[str | Path],
    topk: int = 5,
    backend: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> Iterator[dict]:
    """One dict per file ``inputs`` name, in order, as soon as its batch is done: ``path``,
    ``label``, ``probability`` and ``topk`` (label, probability), or ``path`` and ``error``.
    ``progress``: show how far it is on stderr (:func:`modelcycle.progress.progress_bar`)."""
    if topk < 1:
        raise DataError(f"--topk {topk}: ask for at least 1 class per image")
    if batch_size < 1:
        raise DataError(f"--batch-size {batch_size}: run at least 1 image per batch")
    predictor = load_predictor(run, backend)
    files = expand_image_args(inputs)
    reader = _Reader(predictor)
    threads = DECODE_THREADS  # read once: the benchmark varies it between calls
    pool = ThreadPoolExecutor(threads, thread_name_prefix="predict-decode")
    queued: deque[Future] = deque()
    pending = iter(files)
    bar = progress_bar("predicting", len(files)) if progress else nullcontext(lambda n=1: None)
    try:
        with bar as advance:
            for start in range(0, len(files), batch_size):
                # keep the next batch (or every thread) busy decoding while the model runs this one
                while len(queued) < 2 * max(batch_size, threads) and (named := next(pending, None)):
                    queued.append(pool.submit(reader.read, named))
                batch = [queued.popleft().result() for _ in range(min(batch_size, len(files) - start))]
                yield from reader.answer(batch, topk)
                advance(len(batch))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a reader that stops early (| head) leaves no work


class _Reader:
    """Files -> what the model is fed (exactly what `evaluate` feeds it) -> answers."""

    def __init__(self, predictor: Predictor):
        manifest = predictor.manifest
        cfg = data_section(manifest, workers=0)
        self.predictor = predictor
        self.classes = manifest["classes"]
        self.channels = cfg.channels
        self.size = cfg.image_size
        self.transform = build_transform(cfg, train=False)
        self.collate = Collate(*normalisation(cfg, cfg.channels))

    def read(self, named: NamedFile) -> tuple[NamedFile, np.ndarray | str]:
        """(file, resized uint8 HxWxC picture) or (file, why it cannot be read)."""
        if named.error is not None:
            return named, named.error
        try:
            image = decode_file(named.path, self.channels, min_size=self.size, max_pixels=MAX_PIXELS)
        except DataError as exc:
            return named, str(exc)
        image = self.transform(image=image)["image"]
        return named, image[:, :, None] if image.ndim == 2 else image

    def answer(self, batch: list[tuple[NamedFile, np.ndarray | str]], topk: int) -> Iterator[dict]:
        pictures = [(image, 0) for _, image in batch if not isinstance(image, str)]
        ranked = iter([])
        if pictures:
            logits = torch.from_numpy(self.predictor(self.collate(pictures)[0].numpy()))
            ranked = iter(top_classes(torch.softmax(logits.float(), dim=1).numpy(), self.classes, topk))
        for named, image in batch:
            path = str(named.path)
            yield {"path": path, "error": image} if isinstance(image, str) else {"path": path, **next(ranked)}


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
