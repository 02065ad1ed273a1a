"""Running generation for the HTTP server without blocking its event loop.

Each model has one worker thread: a generation already uses every core through torch's own
threads, so two at once would only slow each other down. Requests wait their turn in that
thread's queue, which is bounded by ``serve.max_queue`` (beyond it: 503 + Retry-After). Results
come back to the event loop as pieces of text, so streaming clients see each token as it is made;
a client that leaves, or a request that times out, stops its generation at the next token.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import HTTPException

from modelcycle.errors import UserError
from modelcycle.lm.generate import Generation, GenerationStream, LanguageModel, Piece
from modelcycle.lm.load import load_lm
from modelcycle.lm.sampling import Sampling


class ServedLM:
    """One language model behind the API: its worker thread and queue."""

    def __init__(self, name: str, lm: LanguageModel, path: str, max_queue: int):
        self.name, self.lm, self.path = name, lm, path
        self.max_queue = max_queue
        self.pending = 0  # requests queued or running; touched only on the event loop
        self.worker = ThreadPoolExecutor(1, thread_name_prefix=f"generate-{name}")

    def warm_up(self) -> None:
        """One token, so no client pays for lazy set-up (first-call allocations, kernels)."""
        self.lm.generate([self.lm.encode("Hello")], Sampling(max_new_tokens=1, temperature=0))

    def check_room(self) -> None:
        if self.pending >= self.max_queue:
            raise HTTPException(
                503, f"{self.pending} requests are waiting for {self.name}; retry shortly", {"Retry-After": "1"}
            )

    def _submit(self, work) -> asyncio.Future:
        self.check_room()
        self.pending += 1
        future = asyncio.get_running_loop().run_in_executor(self.worker, work)
        future.add_done_callback(lambda _f: self._release())
        return future

    def _release(self) -> None:
        self.pending -= 1

    async def generate(self, stream: GenerationStream, timeout_s: float) -> list[Generation]:
        """The whole answer; 504 after ``timeout_s`` (the generation stops at its next token)."""
        cancel = threading.Event()

        def work() -> list[Generation]:
            for _ in stream:
                if cancel.is_set():
                    break
            return stream.results

        try:
            return await asyncio.wait_for(asyncio.shield(self._submit(work)), timeout_s)
        except TimeoutError:
            raise HTTPException(
                504,
                f"no answer within {timeout_s:g} s (serve.request_timeout_s); ask for fewer max_tokens or retry later",
            ) from None
        finally:
            cancel.set()

    async def pieces(self, stream: GenerationStream) -> AsyncIterator[Piece | list[Generation]]:
        """Each ``Piece`` as it is made, then the list of results. Closing the iterator early (the
        client disconnected) stops the generation."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def hand_over(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                cancel.set()

        def work() -> None:
            try:
                for piece in stream:
                    if cancel.is_set():
                        return
                    hand_over(piece)
                hand_over(stream.results)
            except Exception as exc:  # a bug in generation: re-raised on the event loop, logged there
                hand_over(exc)

        self._submit(work)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if isinstance(item, list):
                    return
        finally:
            cancel.set()

    def close(self) -> None:
        self.worker.shutdown(wait=True, cancel_futures=True)


def split_spec(spec: str) -> tuple[str | None, Path]:
    """``runs/a`` or ``name=runs/a``."""
    name, _, path = spec.rpartition("=")
    return name or None, Path(path)


def load_served(specs: list[str], max_queue: int) -> list[ServedLM]:
    from modelcycle.serve.models import model_name

    served: list[ServedLM] = []
    for spec in specs:
        name, path = split_spec(spec)
        name = name or model_name(path)
        if any(s.name == name for s in served):
            raise UserError(f"two models are named {name!r}; name them apart, e.g. {name}-v2={path}")
        served.append(ServedLM(name, load_lm(path), str(path), max_queue))
    return served
