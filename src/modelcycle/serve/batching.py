"""Dynamic batching: images from concurrent requests run through the model together.

A model runs a batch of 32 nearly as fast as a batch of 1 costs per call, so grouping the images
that arrive within a few milliseconds multiplies throughput under load. Each model has one
batching loop and one model thread (calls into one session never overlap); decoding runs in a
separate pool so it never waits behind the model. The queue is bounded: when it is full the
request is refused at once (503 + Retry-After) rather than queued into a timeout.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


class QueueFull(Exception):
    def __init__(self, retry_after_s: int):
        super().__init__(f"the model's queue is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass
class _Item:
    image: np.ndarray
    future: asyncio.Future


class DynamicBatcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int,
        max_delay_ms: float,
        max_queue: int,
        on_batch: Callable[[int], None] = lambda size: None,
    ):
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.arrived = asyncio.Event()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.task: asyncio.Task | None = None
        self.seconds_per_image = 0.01  # running estimate, for Retry-After

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """(N, C, H, W) -> (N, classes) logits; all N images are admitted or none."""
        if self.queue.qsize() + len(images) > self.max_queue:
            raise QueueFull(max(1, math.ceil(self.queue.qsize() * self.seconds_per_image)))
        loop = asyncio.get_running_loop()
        items = [_Item(image, loop.create_future()) for image in images]
        for item in items:
            self.queue.put_nowait(item)
        self.arrived.set()
        try:
            return np.stack(await asyncio.gather(*(item.future for item in items)))
        finally:
            for item in items:  # a timed-out request's images are skipped, not computed
                item.future.cancel()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_delay_s
            while len(batch) < self.max_batch_size:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                wait = deadline - loop.time()
                if wait <= 0:
                    break
                # wait on an event, not on queue.get(): a get() cancelled by a timeout can drop an item
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), wait)
                except TimeoutError:
                    break
            batch = [item for item in batch if not item.future.done()]
            if not batch:
                continue
            started = loop.time()
            try:
                logits = await loop.run_in_executor(self.executor, self.run, np.stack([i.image for i in batch]))
            except Exception as exc:  # noqa: BLE001 - the requests get the error; the loop lives on
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            per_image = (loop.time() - started) / len(batch)
            self.seconds_per_image = 0.9 * self.seconds_per_image + 0.1 * per_image
            self.on_batch(len(batch))
            for item, row in zip(batch, logits, strict=True):
                if not item.future.done():
                    item.future.set_result(row)
