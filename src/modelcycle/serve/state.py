"""What one server holds, whatever protocols answer over it: the models by name (image and text
classifiers behind their batchers, language models behind their generation workers, reward
models), the decode pool, the metrics, the monitor, and the request deadline.

Protocol modules (serve/protocols/) read and use this state; none owns any of it, so one server
can host an image classifier, a text classifier and a language model side by side.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
from fastapi import HTTPException

from modelcycle.config import ServeSection
from modelcycle.errors import DataError
from modelcycle.serve.batching import DynamicBatcher, QueueFull
from modelcycle.serve.metrics import ServeMetrics
from modelcycle.serve.pool import DecodePool


class ServeState:
    """The models, their batchers and the decode pool of one app. ``models`` are the classifiers
    (``/v1/predict`` and ``/v2``: images and texts); ``lms`` and ``rewards`` the others."""

    def __init__(
        self,
        models: list,
        cfg: ServeSection,
        metrics: ServeMetrics | None = None,
        lms: list | None = None,
        rewards: list | None = None,
        api_key: str | None = None,
    ):
        self.cfg = cfg
        self.api_key = api_key
        self.models = {m.name: m for m in models}
        self.lms = {m.name: m for m in lms or []}
        self.rewards = {m.name: m for m in rewards or []}
        self.default = models[0].name if models else None
        self.metrics = metrics or ServeMetrics()
        self.monitor = None  # a modelcycle.monitor.live.Monitor with `serve --monitor DIR`
        self.started = int(time.time())
        self.decode_pool = DecodePool(cfg.preprocess_threads or os.cpu_count() or 1) if models else None
        self.batchers = {
            m.name: DynamicBatcher(
                m.predictor,
                cfg.max_batch_size,
                cfg.max_batch_delay_ms,
                cfg.max_queue,
                on_batch=self.metrics.batch_size.labels(m.name).observe,
            )
            for m in models
        }
        for name, batcher in self.batchers.items():
            self.metrics.queue_depth.labels(name).set_function(lambda b=batcher: b.depth)

    @property
    def images(self) -> dict:
        return {name: m for name, m in self.models.items() if not getattr(m, "texts", False)}

    @property
    def texts(self) -> dict:
        return {name: m for name, m in self.models.items() if getattr(m, "texts", False)}

    @property
    def ready(self) -> bool:
        return all(b.running for b in self.batchers.values())

    async def start(self) -> None:
        for batcher in self.batchers.values():
            batcher.start()

    async def stop(self) -> None:
        """After uvicorn has let in-flight requests finish (graceful shutdown)."""
        for batcher in self.batchers.values():
            await batcher.stop()
        if self.decode_pool is not None:
            self.decode_pool.shutdown()
        for lm in self.lms.values():
            lm.close()
        if self.monitor is not None:
            self.monitor.close()  # commits the rows still waiting

    def model(self, name: str | None, version: str | None = None):
        served = self.models.get(name or self.default) if self.models else None
        if served is None:
            have = ", ".join(self.models) or "no classifier (see /v1/models)"
            raise HTTPException(404, f"no model named {name!r}; this server has {have}")
        if version is not None and version != served.version:
            raise HTTPException(404, f"model {served.name!r} has version {served.version}, not {version!r}")
        return served

    @asynccontextmanager
    async def deadline(self) -> AsyncIterator[float]:
        """``serve.request_timeout_s`` over all the work of a request once its body is in, decoding
        and the model together: 504 when it runs out. Yields the deadline on ``time.monotonic``."""
        timeout = self.cfg.request_timeout_s
        try:
            async with asyncio.timeout(timeout):
                yield time.monotonic() + timeout
        except TimeoutError:
            raise HTTPException(504, f"no answer within {timeout:g} s (serve.request_timeout_s); retry later") from None

    async def decode(self, served, blobs: list[bytes], deadline: float) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode and preprocess in the pool, all images of a request in parallel. With a monitor,
        also each file's ``size`` feature (from the header the decoder reads anyway); else None.
        A job still queued at ``deadline`` is skipped: its request has had its 504."""
        sized = self.monitor is not None
        work = functools.partial(_in_time, deadline, served.preprocess_sized if sized else served.preprocess)
        results = await asyncio.gather(*[self.decode_pool.submit(work, blob) for blob in blobs], return_exceptions=True)
        for i, result in enumerate(results):
            if isinstance(result, DataError):
                raise HTTPException(400, f"image {i}: {result}")
            if isinstance(result, BaseException):
                raise result
        if sized:
            images, sizes = zip(*results, strict=True)
            return np.stack(images), np.asarray(sizes)
        return np.stack(results), None

    async def encode(self, served, texts: list[str], deadline: float) -> np.ndarray:
        """A text classifier's tokens for ``texts`` (packed ids and mask), tokenised in the pool."""
        if sum(len(t) for t in texts) > self.cfg.max_prompt_chars:
            raise HTTPException(
                413,
                f"{sum(len(t) for t in texts):,} characters of text; this server reads at most "
                f"{self.cfg.max_prompt_chars:,} a request (serve.max_prompt_chars); send fewer or shorter",
            )
        return await self.decode_pool.submit(functools.partial(_in_time, deadline, served.encode), texts)

    async def logits(self, served, inputs: np.ndarray, sizes: np.ndarray | None = None) -> np.ndarray:
        """The model's answer; callers bound the wait with :meth:`deadline`."""
        started = time.perf_counter()
        try:
            out = await self.batchers[served.name].submit(inputs)
        except QueueFull as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
        if getattr(served, "texts", False):
            return out
        self.metrics.images.labels(served.name).inc(len(inputs))
        if self.monitor is not None:  # hands the arrays to its writer thread; nothing else on this path
            self.monitor.observe(served, inputs, out, time.perf_counter() - started, sizes)
        return out


def _in_time(deadline: float, work, blob):
    """``work(blob)`` in a pool thread, unless the request's deadline has passed while it queued."""
    if time.monotonic() > deadline:
        raise TimeoutError  # its request has been answered (504); nobody waits for this
    return work(blob)
