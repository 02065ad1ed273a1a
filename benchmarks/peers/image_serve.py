"""Image serving: `modelcycle serve --backend onnx` against LitServe, both batching.

Both serve the same ONNX export of resnet18 trained on the digits at 16 px (bench_serve.py's
model) on 127.0.0.1, with dynamic batching up to 32 images and a 5 ms wait to fill a batch, and
get the same load: a warm-up, then a fixed number of ``POST /v1/predict`` requests of one PNG
each (JSON base64) from 64 concurrent keep-alive connections (bench_serve.py's load generator).
The LitServe side is a LitAPI as its docs write one: decode the base64 PNG with Pillow, resize,
normalise with the package's mean and std, batch with numpy, run an ONNX Runtime session (both
sides keep its default thread count). Quality: accuracy of the served answers on the 360 validation digits.
Whole process: the server's start, the load, the accuracy pass, until it is stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import harness

PEER = "LitServe"
QUALITY = "served accuracy"
CASES = {"image_serve": "image serving, resnet18 ONNX"}
CLIENTS = 64


def prepare(case: str, root: Path, quick: bool) -> dict:
    import bench_serve

    run = bench_serve.build_model(root, epochs=1 if quick else 2)
    requests = 600 if quick else 3000
    return {
        "run": str(run),
        "requests": requests,
        "what": f"{requests} requests of one 8x8 PNG from {CLIENTS} connections, batches of up to 32",
    }


def serve(side: str, case: str, root: Path, threads: int) -> dict:
    import asyncio
    import base64
    import json

    import bench_serve
    from modelcycle.data.manifest import PreparedData

    s = harness.settings(root)
    port = harness.free_port()
    if side == "modelcycle":
        command = [sys.executable, "-m", "modelcycle", "serve", s["run"], "--backend", "onnx", "--port", str(port)]
        command += ["serve.max_batch_size=32", "serve.max_batch_delay_ms=5", "serve.max_queue=1024"]
        health = "/v2/health/ready"
    else:
        script = Path(__file__).with_name("litserve_server.py")  # its own file: LitServe pickles the API
        command, health = [sys.executable, str(script), s["run"], str(port)], "/health"
    items = PreparedData.open(root / "data").split("val")
    bodies = [json.dumps({"images": [base64.b64encode(p.read_bytes()).decode()]}).encode() for p, _ in items]
    server = harness.Server(command, port, health, threads, root / f"server-{side}.log")
    try:
        asyncio.run(bench_serve.load(server.url, bodies, s["requests"] // 5, CLIENTS))  # warm-up
        loaded = asyncio.run(bench_serve.load(server.url, bodies, s["requests"], CLIENTS))
        accuracy = served_accuracy(server.url, bodies, [label for _, label in items])
    finally:
        usage = server.stop()
    if loaded["errors"]:
        raise SystemExit(f"{side}: {loaded['errors']} of {s['requests']} requests failed: {loaded['statuses']}")
    return {"samples": s["requests"], "seconds": s["requests"] / loaded["rate"], "quality": accuracy, **usage}


def served_accuracy(url: str, bodies: list[bytes], labels: list[int]) -> float:
    import httpx

    with httpx.Client(base_url=url, timeout=60) as client:
        answers = [client.post("/v1/predict", content=b, headers={"Content-Type": "application/json"}) for b in bodies]
    right = sum(a.json()["predictions"][0]["index"] == label for a, label in zip(answers, labels, strict=True))
    return right / len(labels)
