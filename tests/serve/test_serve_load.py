"""10,000 requests, a fifth of them malformed in assorted ways, from 32 concurrent clients:
every good one gets the right answer, every bad one a 4xx, and the server's memory levels off."""

from __future__ import annotations

import asyncio
import base64
import random
from pathlib import Path

import httpx
import pytest

import modelcycle
from modelcycle.serve.process import ServerProcess

TOTAL = 10_000
CLIENTS = 32


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def bad_requests(good: str) -> list[dict]:
    """(kwargs for httpx.post, expected status range) for kinds of bad input a real client sends."""
    raw = base64.b64decode(good)
    return [
        {"json": {"images": ["%%%not-base64%%%"]}},
        {"json": {"images": [base64.b64encode(raw[: len(raw) // 2]).decode()]}},  # truncated PNG
        {"json": {"images": [base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(100)).decode()]}},
        {"json": {"images": [good] * 9}},  # over max_images
        {"json": {"imgs": [good]}},
        {"json": {"images": []}},
        {"content": b'{"images": [', "headers": {"content-type": "application/json"}},
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        {"json": {"images": [good]}, "params": {"model": "missing"}},
        {"json": {"images": [good]}, "params": {"topk": "-3"}},
    ]


@pytest.mark.slow
def test_ten_thousand_requests_with_malformed_ones_mixed_in(trained, images):
    sample = images[::3]
    expected = {str(r["path"]): r["label"] for r in modelcycle.predict(trained, sample)}
    encoded = {str(p): base64.b64encode(p.read_bytes()).decode() for p in sample}
    rng = random.Random(0)
    plan = []
    for _ in range(TOTAL):
        path = str(rng.choice(sample))
        if rng.random() < 0.2:
            plan.append(("bad", rng.choice(bad_requests(encoded[path])), path))
        else:
            plan.append(("good", {"json": {"images": [encoded[path]]}}, path))

    with ServerProcess([trained], "serve.max_images=8", "serve.max_queue=1024") as server:
        pid = server.process.pid
        memory = []
        outcomes = {"good_ok": 0, "bad_4xx": 0}

        async def worker(queue: asyncio.Queue, client: httpx.AsyncClient) -> None:
            while not queue.empty():
                i, (kind, kwargs, path) = queue.get_nowait()
                response = await client.post(server.url + "/v1/predict", **kwargs)
                if kind == "good":
                    assert response.status_code == 200, response.text
                    assert response.json()["predictions"][0]["label"] == expected[path]
                    outcomes["good_ok"] += 1
                else:
                    assert 400 <= response.status_code < 500, (kwargs, response.status_code, response.text)
                    assert response.json()["error"]
                    outcomes["bad_4xx"] += 1
                if i in (2_000, TOTAL - 1):
                    memory.append(rss_mb(pid))

        async def main() -> None:
            queue: asyncio.Queue = asyncio.Queue()
            for item in enumerate(plan):
                queue.put_nowait(item)
            limits = httpx.Limits(max_connections=CLIENTS)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                await asyncio.gather(*(worker(queue, client) for _ in range(CLIENTS)))

        asyncio.run(main())
        assert httpx.get(server.url + "/v2/health/live").status_code == 200  # still up
        assert server.process.poll() is None

    assert outcomes["good_ok"] + outcomes["bad_4xx"] == TOTAL
    assert outcomes["bad_4xx"] > TOTAL * 0.15
    early, late = memory
    assert late - early < 50, f"server RSS grew from {early:.0f} MB to {late:.0f} MB over 8,000 requests"
