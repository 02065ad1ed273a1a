"""Hostile images against the image server: what thin and huge-header files mixed into the traffic
cost the good requests.

The script trains the digits CNN (16 px), starts two `modelcycle serve` processes on 127.0.0.1 and
sends each the same number of requests (one image each, JSON base64) from concurrent keep-alive
connections, in alternating rounds (A B B A ...) so that other work on the machine hits both alike:

- unmixed: good digits only;
- mixed: every tenth request (``--bad-every``) hostile instead, alternately a thin PNG of
  1 x 100,000 pixels (2 KB; before the aspect-ratio limit its shorter side was resized up to the
  model's 16 px: 1.6 M x 16 pixels per request) and a PNG whose header claims 100,000 x 100,000
  pixels (refused from the header).

It prints p50/p99 of the good requests in both runs and their ratio (target: mixed p99 < 2x the
unmixed one), the answers the hostile requests got (target: all 4xx, no 5xx anywhere) and each
server's peak RSS (VmHWM; target: mixed within 1.25x of unmixed). The load generator is
bench_serve's minimal HTTP client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

import common
from bench_serve import load
from modelcycle.data.manifest import PreparedData
from modelcycle.serve.process import ServerProcess

P99_TARGET = 2.0
RSS_TARGET = 1.25


def thin_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 200).save(buffer, "PNG")
    return buffer.getvalue()


def claiming(png: bytes, width: int, height: int) -> bytes:
    """``png`` with its IHDR rewritten to claim ``width`` x ``height`` (and a valid CRC): the
    pixel data no longer fits, but only a decoder that gets past the header would notice."""
    data = bytearray(png)
    struct.pack_into(">II", data, 16, width, height)  # after the signature, length and "IHDR"
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def json_body(data: bytes) -> bytes:
    return json.dumps({"images": [base64.b64encode(data).decode()]}).encode()


def plan(good: list[bytes], hostile: list[bytes], bad_every: int) -> tuple[list[bytes], list[bool]]:
    """Bodies and whether each is hostile: position ``i`` is hostile when ``i % bad_every == 0``,
    the list a multiple of ``bad_every`` long, so that request ``i`` of a run is too."""
    bodies, bad = [], []
    for block in range(len(good) // (bad_every - 1)):
        bodies.append(hostile[block % len(hostile)])
        bad.append(True)
        bodies.extend(good[block * (bad_every - 1) : (block + 1) * (bad_every - 1)])
        bad.extend([False] * (bad_every - 1))
    return bodies, bad


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1e3
    return (float(np.percentile(ms, 50)), float(np.percentile(ms, 99))) if len(ms) else (float("nan"),) * 2


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "smoke run: 1 epoch, 1,000 requests per run")
    parser.add_argument("--requests", type=int, default=10_000, help="requests per run (unmixed and mixed)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent connections")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per run, alternated between the two servers")
    parser.add_argument("--bad-every", type=int, default=10, help="one request in this many is hostile")
    parser.add_argument("--epochs", type=int, default=3, help="digits CNN training epochs")
    args = parser.parse_args()
    for name, value in (("requests", 1000), ("epochs", 1), ("rounds", 2)):
        common.quick_default(args, name, value)
    common.console.print(common.environment_line(common.set_threads(args.threads)), style="dim")
    busy = os.getloadavg()[0]
    with common.temp_dir("hostile", args.workdir, args.keep) as root, contextlib.ExitStack() as stack:
        common.digits_data(root)
        run = common.train_on_digits(root, "digits", [f"train.epochs={args.epochs}"])
        good = [json_body(path.read_bytes()) for path, _ in PreparedData.open(root / "data").split("val")]
        thin = thin_png(1, 100_000)
        hostile = [json_body(thin), json_body(claiming(thin_png(8, 8), 100_000, 100_000))]
        mixed_bodies, bad = plan(good, hostile, args.bad_every)
        bodies = {"unmixed": good, "mixed": mixed_bodies}
        settings = ["serve.max_queue=1024"]
        servers = {name: stack.enter_context(ServerProcess([run], *settings)) for name in bodies}
        for server in servers.values():  # warm-up: good requests only
            asyncio.run(load(server.url, good, min(500, args.requests // 5), args.clients))
        per_round = max(1, args.requests // args.rounds)
        samples: dict[str, list[tuple[int, float, int]]] = {name: [] for name in bodies}

        def measure(name: str):
            def once() -> float:
                result = asyncio.run(load(servers[name].url, bodies[name], per_round, args.clients))
                samples[name].extend(result["samples"])
                return result["rate"]

            return once

        rates = common.alternate({name: measure(name) for name in bodies}, args.rounds)
        peak = {name: peak_rss_mb(server.process.pid) for name, server in servers.items()}

    rows, p99 = [], {}
    for name in bodies:
        is_bad = bad if name == "mixed" else [False]
        good_seconds = [s for i, s, _ in samples[name] if not is_bad[i % len(is_bad)]]
        p50, p99[name] = percentiles(good_seconds)
        statuses = [status for *_, status in samples[name]]
        rows.append(
            [
                f"{name}: good requests",
                len(good_seconds),
                p50,
                p99[name],
                common.median(rates[name]),
                sum(s >= 500 for s in statuses),
                peak[name],
            ]
        )
    hostile_samples = [(s, status) for i, s, status in samples["mixed"] if bad[i % len(bad)]]
    refused = sum(400 <= status < 500 for _, status in hostile_samples)
    h50, h99 = percentiles([s for s, _ in hostile_samples])
    rows.append(["mixed: hostile requests", len(hostile_samples), h50, h99, "-", "-", "-"])
    ratio = common.ratio(p99["mixed"], p99["unmixed"])
    rss_ratio = common.ratio(peak["mixed"], peak["unmixed"])
    five_xx = sum(status >= 500 for name in samples for *_, status in samples[name])
    common.print_table(
        f"Good requests with hostile images mixed in (1 in {args.bad_every}), {args.clients} clients on 127.0.0.1",
        ["", "requests", "p50 ms", "p99 ms", "requests/s", "5xx", "server peak RSS MB"],
        rows,
        note=f"{args.requests:,} requests per run in {args.rounds} alternating rounds after a warm-up; hostile: "
        f"a 1 x 100,000 PNG ({len(thin):,} bytes) and a PNG header claiming 100,000 x 100,000, alternately; "
        f"{refused:,} of {len(hostile_samples):,} answered 4xx. p99 mixed / unmixed = {ratio:.2f}x, peak RSS "
        f"mixed / unmixed = {rss_ratio:.2f}x. Servers and load generator share the {os.cpu_count()} cores.",
    )
    common.warn_if_busy(busy, "latencies are not the idle-machine figures")
    common.verdict(ratio < P99_TARGET, f"good requests' p99 mixed / unmixed = {ratio:.2f}x (target < {P99_TARGET}x)")
    common.verdict(five_xx == 0 and refused == len(hostile_samples), f"{five_xx} 5xx; every hostile request a 4xx")
    common.verdict(rss_ratio <= RSS_TARGET, f"peak RSS mixed / unmixed = {rss_ratio:.2f}x (target <= {RSS_TARGET}x)")


if __name__ == "__main__":
    main()
