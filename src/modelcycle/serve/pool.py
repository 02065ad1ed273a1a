"""A minimal thread pool for decoding: jobs in, asyncio futures out.

``loop.run_in_executor`` on a ThreadPoolExecutor takes a semaphore and a lock per job that the
worker threads also take; on two cores the event loop waited on them about 0.1 ms a request.
A SimpleQueue (one C-level lock, no Python bookkeeping) hands jobs over for less.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the request gave up (timeout): nobody is waiting
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class DecodePool:
    def __init__(self, threads: int, name: str = "decode"):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(threads)]
        for thread in self.threads:
            thread.start()

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            fn, arg, future, loop = job
            try:
                result, error = fn(arg), None
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop has closed (shutdown): nobody is waiting
                loop.call_soon_threadsafe(_settle, future, result, error)

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.jobs.put((fn, arg, future, loop))
        return future

    def shutdown(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)
