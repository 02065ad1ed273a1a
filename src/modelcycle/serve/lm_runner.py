"""Running generation for the HTTP server without blocking its event loop, and fairly.

Each model has one worker thread: a generation already uses every core through torch's own
threads, so two forward passes at once would only slow each other down. But one request must not
hold the model for long either (a long answer to a batch of prompts would make every other client
wait for all of it), so the worker lets up to ``serve.max_active`` generations take turns, one
decoding step each, round-robin; the rest wait in a queue bounded by ``serve.max_queue`` (beyond
it: 503 + Retry-After). Results come back to the event loop as pieces of text, so streaming
clients see each token as it is made; a client that leaves, or a request that runs past
``serve.request_timeout_s`` (whole answers: 504; streams: an error event), stops its generation
at its next turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable

from fastapi import HTTPException

from modelcycle.lm.generate import Generation, GenerationStream, LanguageModel, Piece
from modelcycle.lm.sampling import Sampling


class _Job:
    """One request's generation in the worker: ``pieces`` gets each step's new text (streams
    only), ``end`` the results or the exception, both called in the worker thread."""

    def __init__(self, stream: GenerationStream, pieces: Callable | None, end: Callable):
        self.stream, self.pieces, self.end = stream, pieces, end
        self.steps = stream.steps()
        self.cancel = threading.Event()


class ServedLM:
    """One language model behind the API: its worker thread and queue."""

    def __init__(self, name: str, lm: LanguageModel, path: str, max_queue: int, max_active: int = 8):
        self.name, self.lm, self.path = name, lm, path
        self.task: str | None = None  # what /v1/models shows: the package's task
        self.max_queue, self.max_active = max_queue, max_active
        self.pending = 0  # requests queued or running; touched only on the event loop
        self._queue: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"generate-{name}", daemon=True)
        self._thread.start()

    def warm_up(self) -> None:
        """One token, so no client pays for lazy set-up (first-call allocations, kernels); and a
        chat template that fails is an error now, at start, not on the first chat request."""
        if getattr(self.lm.tokenizer, "chat_template", None):
            self.lm.chat_ids([{"role": "user", "content": "Hello"}])
        _ = self.lm.chars_per_token  # computed once here, not on the first request
        self.lm.generate([self.lm.encode("Hello")], Sampling(max_new_tokens=1, temperature=0))

    def check_room(self) -> None:
        if self.pending >= self.max_queue:
            raise HTTPException(
                503, f"{self.pending} requests are waiting for {self.name}; retry shortly", {"Retry-After": "1"}
            )

    # ------------------------------------------------------------ the worker thread

    def _run(self) -> None:
        active: list[_Job] = []
        while True:
            with self._wake:
                while not active and not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed:  # shutting down: what waits is dropped, what runs finishes
                    while self._queue:
                        self._queue.popleft().end(HTTPException(503, "the server is shutting down"))
                    if not active:
                        return
                while self._queue and len(active) < self.max_active:
                    active.append(self._queue.popleft())
            for job in list(active):
                if not self._turn(job):
                    active.remove(job)

    def _turn(self, job: _Job) -> bool:
        """One decoding step of ``job``; False once it is over."""
        if job.cancel.is_set():
            job.steps.close()  # frees its KV cache now
            job.end(None)
            return False
        try:
            made = next(job.steps)
        except StopIteration:
            job.end(job.stream.results)
            return False
        except Exception as exc:  # a bug in generation: re-raised on the event loop, logged there
            job.end(exc)
            return False
        if made and job.pieces is not None:
            job.pieces(made)
        return True

    def _enqueue(self, job: _Job) -> None:
        self.check_room()
        self.pending += 1
        with self._wake:
            self._queue.append(job)
            self._wake.notify()

    def _release(self) -> None:
        self.pending -= 1

    # ------------------------------------------------------------ the event loop's side

    async def generate(self, stream: GenerationStream, timeout_s: float) -> list[Generation]:
        """The whole answer; 504 after ``timeout_s`` (the generation stops at its next turn)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future = loop.create_future()

        def settle(outcome) -> None:  # on the event loop
            self._release()
            if answer.done():
                return
            if isinstance(outcome, BaseException):
                answer.set_exception(outcome)
            else:
                answer.set_result(outcome)

        job = _Job(stream, None, lambda outcome: _call_soon(loop, settle, outcome))
        self._enqueue(job)
        try:
            return await asyncio.wait_for(asyncio.shield(answer), timeout_s)
        except TimeoutError:
            raise HTTPException(
                504,
                f"no answer within {timeout_s:g} s (serve.request_timeout_s); ask for fewer max_tokens or retry later",
            ) from None
        finally:
            job.cancel.set()

    async def pieces(self, stream: GenerationStream, timeout_s: float) -> AsyncIterator[Piece | list[Generation]]:
        """Each ``Piece`` as it is made, then the list of results. Closing the iterator early (the
        client disconnected) stops the generation; so does running past ``timeout_s`` (504)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def end(outcome) -> None:  # on the event loop
            self._release()
            queue.put_nowait(outcome)

        job = _Job(
            stream,
            lambda made: _call_soon(loop, queue.put_nowait, made),
            lambda outcome: _call_soon(loop, end, outcome),
        )
        self._enqueue(job)
        deadline = loop.time() + timeout_s
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), max(deadline - loop.time(), 0))
                except TimeoutError:
                    raise HTTPException(
                        504,
                        f"the answer took over {timeout_s:g} s (serve.request_timeout_s) and was cut off; "
                        "ask for fewer max_tokens or retry later",
                    ) from None
                if isinstance(item, BaseException):
                    raise item
                if item is None:  # cancelled
                    return
                if item and isinstance(item[0], Piece):
                    for piece in item:
                        yield piece
                    continue
                yield item
                return
        finally:
            job.cancel.set()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()


def _call_soon(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    """``fn(*args)`` on ``loop`` from the worker thread; nothing when the loop is gone (shutdown)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)
