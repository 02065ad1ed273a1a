"""Dynamic batching and graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
import numpy as np
import pytest

from helpers import b64_file
from modelcycle.serve.batching import DynamicBatcher, QueueFull
from modelcycle.serve.process import ServerProcess


class RecordingModel:
    """Logits = the image's first pixel in every class, so each answer says whose image it was."""

    def __init__(self, seconds: float = 0.0):
        self.batches: list[int] = []
        self.seconds = seconds

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.batches.append(len(images))
        time.sleep(self.seconds)
        return np.repeat(images[:, :1, 0, 0], 3, axis=1)


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_images_share_batches_and_get_their_own_answers():
    model = RecordingModel(seconds=0.01)

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=8, max_delay_ms=20, max_queue=100)
        batcher.start()
        requests = [np.full((n, 1, 2, 2), float(i), np.float32) for i, n in enumerate([1, 3, 2, 1, 5, 1, 1, 2])]
        answers = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()
        return requests, answers

    requests, answers = run(main())
    for request, answer in zip(requests, answers, strict=True):
        assert answer.shape == (len(request), 3) and (answer == request[0, 0, 0, 0]).all()
    assert sum(model.batches) == 16 and max(model.batches) <= 8 and len(model.batches) <= 3


def test_batch_size_one_turns_batching_off():
    model = RecordingModel()

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=1, max_delay_ms=50, max_queue=100)
        batcher.start()
        await asyncio.gather(*(batcher.submit(np.zeros((2, 1, 2, 2), np.float32)) for _ in range(4)))
        await batcher.stop()

    run(main())
    assert model.batches == [1] * 8


def test_a_full_queue_refuses_whole_requests_and_a_model_error_reaches_only_its_callers():
    def failing(images: np.ndarray) -> np.ndarray:
        raise RuntimeError("model broke")

    async def main():
        batcher = DynamicBatcher(failing, max_batch_size=4, max_delay_ms=0, max_queue=3)
        batcher.start()
        with pytest.raises(QueueFull) as full:
            await batcher.submit(np.zeros((4, 1, 2, 2), np.float32))
        with pytest.raises(RuntimeError, match="model broke"):
            await batcher.submit(np.zeros((2, 1, 2, 2), np.float32))
        alive = batcher.running
        await batcher.stop()
        return full.value.retry_after_s, alive

    retry_after, alive = run(main())
    assert retry_after >= 1 and alive


def test_sigterm_lets_in_flight_requests_finish(trained, images):
    # a long batch delay keeps the request in flight while SIGTERM arrives
    server = ServerProcess([trained], "serve.max_batch_delay_ms=1500", "serve.max_batch_size=64")
    result = {}

    def request():
        result["response"] = httpx.post(server.url + "/v1/predict", json={"images": [b64_file(images[0])]}, timeout=30)

    client = threading.Thread(target=request)
    client.start()
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    client.join(30)
    code = server.process.wait(30)
    assert result["response"].status_code == 200, result["response"].text
    # uvicorn re-raises the signal after its clean shutdown: the exit says "terminated", the log says how
    assert code == -signal.SIGTERM and "in-flight requests answered" in server.log
    with pytest.raises(httpx.ConnectError):  # and it takes no new ones
        httpx.get(server.url + "/v2/health/live", timeout=2)


def test_the_model_thread_takes_batches_while_the_event_loop_is_busy():
    """Batches are formed on the model thread, so a busy event loop does not leave the model idle."""
    model = RecordingModel(seconds=0.02)

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=4, max_delay_ms=0, max_queue=100)
        batcher.start()
        images = [np.full((1, 1, 2, 2), float(i), np.float32) for i in range(12)]
        pending = asyncio.gather(*(batcher.submit(image) for image in images))
        await asyncio.sleep(0)  # each submit queues its image
        deadline = time.monotonic() + 10
        while len(model.batches) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # blocks the event loop: no callback of ours runs meanwhile
        batches_while_blocked = len(model.batches)
        answers = await pending
        await batcher.stop()
        return images, answers, batches_while_blocked

    images, answers, batches_while_blocked = run(main())
    assert batches_while_blocked >= 3 and sum(model.batches) == 12  # 12 images, at most 4 a batch
    assert [a[0, 0] for a in answers] == [i[0, 0, 0, 0] for i in images]
