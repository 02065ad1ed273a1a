"""Running generation for the HTTP server without blocking its event loop: one worker thread per
model drives a continuous batch (``lm/batching.py``). A request's answers (its prompts x ``n``)
join the running batch at the next decoding step and leave it as each one ends, so concurrent
requests share every forward pass; up to ``serve.max_active`` answers decode together (a request
larger than that runs once the batch is empty), the rest wait in a queue bounded by
``serve.max_queue`` (beyond it: 503 + Retry-After), first come, first served.

Results come back to the event loop as chunks of text (with their tokens' log-probabilities
when asked), so streaming clients see each token as it is made; a client that leaves, or a
request that runs past ``serve.request_timeout_s`` (whole answers: 504; streams: an error
event), leaves the batch at the next step. Each step's batch size, each request's time to its
first token and each answer's time per further token go to the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import HTTPException

from modelcycle.lm.answer import Answer, Top
from modelcycle.lm.batching import ContinuousBatch
from modelcycle.lm.generate import LanguageModel
from modelcycle.lm.sampling import Sampling


@dataclass
class Chunk:
    """New text of the answer ``index`` of a request, and the tokens made since its last chunk
    (their log-probabilities, and the likeliest alternatives, when the request asked)."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[Top] | None = None


class _Job:
    """One request in the worker: ``chunks`` gets each step's new text (streams only), ``end``
    the answers or the exception, both called in the worker thread."""

    def __init__(self, answers: list[Answer], echo: bool, chunks: Callable | None, end: Callable):
        self.answers, self.echo, self.chunks, self.end = answers, echo, chunks, end
        self.index = {id(a): i for i, a in enumerate(answers)}
        self.sent = [0] * len(answers)  # tokens of each answer already in a chunk
        self.cancel = threading.Event()
        self.queued = time.monotonic()
        self.first: dict[int, float] = {}  # answer index -> when its first token came
        self.ended: set[int] = set()  # answers whose time per token is counted

    def chunk(self, i: int, text: str) -> Chunk:
        answer, start = self.answers[i], self.sent[i]
        self.sent[i] = len(answer.token_ids)
        cut = slice(start, self.sent[i])
        logprobs = answer.logprobs[cut] if answer.logprobs is not None else None
        tops = answer.top_logprobs[cut] if answer.top_logprobs is not None else None
        return Chunk(i, text, answer.token_ids[cut], logprobs, tops)


class ServedLM:
    """One language model behind the API: its worker thread, queue and running batch."""

    def __init__(self, name: str, lm: LanguageModel, path: str, max_queue: int, max_active: int = 32):
        self.name, self.lm, self.path = name, lm, path
        self.task: str | None = None  # what /v1/models shows: the package's task
        self.max_queue, self.max_active = max_queue, max_active
        self.metrics = None  # serve.metrics.LMMetrics, set by the protocol that serves it
        self.defaults: dict = {}  # its generation_config.json sampling defaults (lm/defaults.py)
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
        batch = ContinuousBatch(self.lm)
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
                rows = sum(not answer.done for job in active for answer in job.answers)
                while self._queue and (not rows or rows + len(self._queue[0].answers) <= self.max_active):
                    job = self._queue.popleft()
                    active.append(job)
                    batch.add(job.answers, job.echo)
                    rows += len(job.answers)
            for job in [j for j in active if j.cancel.is_set()]:
                batch.drop(job.answers)  # frees its KV cache now
                active.remove(job)
                job.end(None)
            if not active:
                continue
            try:
                made = batch.step()
            except Exception as exc:  # a bug in generation: re-raised on the event loop, logged there
                for job in active:
                    job.end(exc)
                active, batch = [], ContinuousBatch(self.lm)
                continue
            if batch.decoded:
                self._observe("batch_size", batch.decoded)
            self._hand_out(active, made)
            for job in [j for j in active if all(a.done for a in j.answers)]:
                active.remove(job)
                job.end(job.answers)

    def _hand_out(self, active: list[_Job], made: list[tuple[Answer, str]]) -> None:
        now = time.monotonic()
        texts: dict[int, str] = {}
        for answer, text in made:
            texts[id(answer)] = texts.get(id(answer), "") + text
        for job in active:
            chunks = []
            for i, answer in enumerate(job.answers):
                if answer.token_ids and i not in job.first:
                    if not job.first:
                        self._observe("time_to_first_token", now - job.queued)
                    job.first[i] = now
                text = texts.get(id(answer), "")
                if job.chunks is not None and (text or len(answer.token_ids) > job.sent[i]):
                    chunks.append(job.chunk(i, text))
                if answer.done and i not in job.ended:
                    job.ended.add(i)
                    if len(answer.token_ids) > 1:
                        self._observe("time_per_output_token", (now - job.first[i]) / (len(answer.token_ids) - 1))
            if chunks:
                job.chunks(chunks)

    def _observe(self, name: str, value: float) -> None:
        if self.metrics is not None:
            getattr(self.metrics, name).labels(self.name).observe(value)

    def _enqueue(self, job: _Job) -> None:
        self.check_room()
        self.pending += 1
        with self._wake:
            self._queue.append(job)
            self._wake.notify()

    def _release(self) -> None:
        self.pending -= 1

    # ------------------------------------------------------------ the event loop's side

    async def generate(self, answers: list[Answer], timeout_s: float, echo: bool = False) -> list[Answer]:
        """The whole answers; 504 after ``timeout_s`` (the generation stops at its next step)."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future = loop.create_future()

        def settle(outcome) -> None:  # on the event loop
            self._release()
            if result.done():
                return
            if isinstance(outcome, BaseException):
                result.set_exception(outcome)
            else:
                result.set_result(outcome)

        job = _Job(answers, echo, None, lambda outcome: _call_soon(loop, settle, outcome))
        self._enqueue(job)
        try:
            return await asyncio.wait_for(asyncio.shield(result), timeout_s)
        except TimeoutError:
            raise HTTPException(
                504,
                f"no answer within {timeout_s:g} s (serve.request_timeout_s); ask for fewer max_tokens or retry later",
            ) from None
        finally:
            job.cancel.set()

    async def chunks(
        self, answers: list[Answer], timeout_s: float, echo: bool = False
    ) -> AsyncIterator[list[Chunk] | list[Answer]]:
        """Each step's chunks as they are made, then the finished answers. Closing the iterator
        early (the client disconnected) stops the generation; so does running past
        ``timeout_s`` (504)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def end(outcome) -> None:  # on the event loop
            self._release()
            queue.put_nowait(outcome)

        job = _Job(
            answers,
            echo,
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
                yield item
                if item and isinstance(item[0], Answer):
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
