"""Serving figures: images per second through the HTTP server against the model's own limit.

The script trains resnet18 on the bundled digits (16 px), exports it to ONNX, and in this one
process:

1. measures the model's own batched throughput (ONNX Runtime, batch 32, in-process): the limit,
   right before and right after the batched server run (their mean), as other work on the
   machine moves both sides alike;
2. starts `modelcycle serve --backend onnx` on 127.0.0.1 and sends a fixed number of requests
   (one PNG each, JSON base64) from 64 concurrent keep-alive connections: images per second,
   p50/p99 latency and errors, with dynamic batching on (max batch 32) and off (max batch 1).

Target: served images/s with batching >= 0.8 x the limit, zero errors. The load generator is a
minimal HTTP/1.1 client on asyncio (prebuilt requests, no parsing beyond the status line and
Content-Length) so that it takes as little as possible of the two cores from the server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

import common
from modelcycle.data.manifest import PreparedData
from modelcycle.evaluation.inference import preprocess
from modelcycle.evaluation.speed import throughput
from modelcycle.export.export import export
from modelcycle.export.runtime import load_predictor
from modelcycle.runs import read_manifest
from modelcycle.serve.process import ServerProcess

TARGET = 0.8


def build_model(root: Path, epochs: int) -> Path:
    common.digits_data(root)
    run = common.train_on_digits(root, "resnet18", [*common.RESNET18_ON_DIGITS, f"train.epochs={epochs}"])
    export(run, "onnx")
    return run


async def load(url: str, bodies: list[bytes], total: int, clients: int) -> dict:
    """``total`` POST /v1/predict requests over ``clients`` keep-alive connections; request i
    sends ``bodies[i % len(bodies)]``. ``samples`` has (i, seconds, status) per request."""
    parsed = urlparse(url)
    requests = [
        (
            f"POST /v1/predict HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]
    samples: list[tuple[int, float, int]] = []
    counter = iter(range(total))

    async def client() -> None:
        reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
        for i in counter:
            started = time.perf_counter()
            writer.write(requests[i % len(requests)])
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            samples.append((i, time.perf_counter() - started, int(status_line.split()[1])))
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - started
    ms = np.asarray([latency for _, latency, _ in samples]) * 1e3
    statuses = dict(Counter(status for _, _, status in samples))
    return {
        "rate": total / seconds,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "errors": sum(n for s, n in statuses.items() if s != 200),
        "statuses": statuses,
        "samples": samples,
    }


def model_limit(run: Path, batch: np.ndarray, seconds: float) -> float:
    """Images/s of the ONNX model called in-process at batch 32 (the predictor and its threads
    are gone afterwards, so they never compete with the server)."""
    return throughput(load_predictor(run, "onnx"), batch, seconds)


def serve_and_load(run: Path, settings: list[str], bodies: list[bytes], args) -> dict:
    with ServerProcess([run], "--backend", "onnx", *settings) as server:
        asyncio.run(load(server.url, bodies, min(args.requests // 5, 500), args.clients))  # warm-up
        return asyncio.run(load(server.url, bodies, args.requests, args.clients))


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "smoke run: 1 epoch, fewer requests")
    parser.add_argument("--epochs", type=int, default=4, help="resnet18 training epochs")
    parser.add_argument("--requests", type=int, default=6000, help="requests per server run")
    parser.add_argument("--clients", type=int, default=64, help="concurrent connections")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per in-process throughput round")
    parser.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="a folder kept by an earlier run's --keep: serve its model and data instead of training again",
    )
    args = parser.parse_args()
    for name, value in (("epochs", 1), ("requests", 1000), ("seconds", 1.0)):
        common.quick_default(args, name, value)
    threads = common.set_threads(args.threads)
    common.console.print(common.environment_line(threads), style="dim")
    busy = os.getloadavg()[0]  # before anything of ours runs
    with (
        contextlib.nullcontext(args.reuse) if args.reuse else common.temp_dir("serve", args.workdir, args.keep) as root
    ):
        run = root / "runs" / "resnet18" if args.reuse else build_model(root, args.epochs)
        items = PreparedData.open(root / "data").split("val")
        batch = preprocess(read_manifest(run), items[:32]).numpy()
        bodies = [json.dumps({"images": [base64.b64encode(p.read_bytes()).decode()]}).encode() for p, _ in items]
        # the limit right before and right after the batched server run, so that a change in the
        # machine's load during the run moves both sides of the ratio
        before = model_limit(run, batch, args.seconds)
        batched = serve_and_load(run, ["serve.max_batch_size=32", "serve.max_queue=1024"], bodies, args)
        after = model_limit(run, batch, args.seconds)
        limit = (before + after) / 2
        unbatched = serve_and_load(run, ["serve.max_batch_size=1", "serve.max_queue=1024"], bodies, args)

    rows = [["model in-process, ONNX Runtime batch 32 (the limit)", limit, "-", "-", "-", "1.00x"]]
    for name, r in (("served, dynamic batching (max 32)", batched), ("served, batching off (max 1)", unbatched)):
        rows.append([name, r["rate"], f"{r['p50']:.1f}", f"{r['p99']:.1f}", r["errors"], f"{r['rate'] / limit:.2f}x"])
    common.print_table(
        f"Serving resnet18 (digits 16 px, ONNX Runtime) to {args.clients} concurrent clients on 127.0.0.1",
        ["", "images/s", "p50 ms", "p99 ms", "errors", "of the limit"],
        rows,
        note=f"{args.requests:,} requests of one PNG each (JSON base64) per server run after a warm-up; the limit is "
        f"the mean of {before:,.0f} and {after:,.0f} img/s, measured right before and after the batched run; "
        f"batching buys {batched['rate'] / unbatched['rate']:.2f}x. Server and load generator share the "
        f"{os.cpu_count()} cores.",
    )
    # the scheduler shares the cores among the runnable threads of every job, and the server has
    # more of them than the in-process call: the ratio then says little about an idle machine
    common.warn_if_busy(busy, "the ratios above are not the idle-machine figures")
    common.verdict(
        batched["rate"] >= TARGET * limit,
        f"served {batched['rate']:,.0f} img/s = {batched['rate'] / limit:.2f}x the model's batched throughput "
        f"(target >= {TARGET}x)",
    )
    common.verdict(batched["errors"] == 0 and unbatched["errors"] == 0, "zero errors in both runs")


if __name__ == "__main__":
    main()
