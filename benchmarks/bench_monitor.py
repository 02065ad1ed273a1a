"""Monitoring overhead: serving throughput with `serve --monitor` against the same server without it.

The script builds bench_serve.py's model (resnet18 on the bundled digits, 16 px, ONNX), starts two
servers on 127.0.0.1, one plain and one logging every image (monitor.sample_rate=1: features,
SQLite rows, live drift gauges), and drives both with bench_serve.py's load generator (one PNG
per request, JSON base64, 64 concurrent keep-alive connections), alternating rounds so that a
busy spell on the machine hits both alike.

Target: throughput with monitoring >= 0.95 x without, zero errors, every image logged. On a
shared machine throughput swings with other people's work, so the table also gives each server
process's CPU time per image (from /proc), which the neighbours hardly move: the monitoring's own
cost, measured directly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
from pathlib import Path

import common
from bench_serve import build_model, load
from modelcycle.data.manifest import PreparedData
from modelcycle.serve.process import ServerProcess

TARGET = 0.95


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "smoke run: 1 epoch, fewer requests and rounds")
    parser.add_argument("--epochs", type=int, default=4, help="resnet18 training epochs")
    parser.add_argument("--requests", type=int, default=4000, help="requests per round and server")
    parser.add_argument("--rounds", type=int, default=4, help="measurement rounds per server (alternated)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent connections")
    args = parser.parse_args()
    for name, value in (("epochs", 1), ("requests", 1000), ("rounds", 2)):
        common.quick_default(args, name, value)
    threads = common.set_threads(args.threads)
    common.console.print(common.environment_line(threads), style="dim")
    with common.temp_dir("monitor", args.workdir, args.keep) as root:
        run = build_model(root, args.epochs)
        items = PreparedData.open(root / "data").split("val")
        bodies = [json.dumps({"images": [base64.b64encode(p.read_bytes()).decode()]}).encode() for p, _ in items]
        settings = ["--backend", "onnx", "serve.max_batch_size=32", "serve.max_queue=1024"]
        log_dir = root / "monitor"
        with (
            ServerProcess([run], *settings) as plain,
            ServerProcess([run], *settings, "--monitor", log_dir, "monitor.sample_rate=1") as monitored,
        ):
            servers = {"off": plain, "on": monitored}
            for server in servers.values():  # warm-up
                asyncio.run(load(server.url, bodies, min(args.requests // 5, 500), args.clients))
            results = {name: [] for name in servers}

            def measure(name: str):
                def once() -> float:
                    cpu = _cpu_seconds(servers[name].process.pid)
                    result = asyncio.run(load(servers[name].url, bodies, args.requests, args.clients))
                    result["cpu_ms"] = (_cpu_seconds(servers[name].process.pid) - cpu) / args.requests * 1e3
                    results[name].append(result)
                    return result["rate"]

                return once

            rates = common.alternate({name: measure(name) for name in servers}, args.rounds)
        logged = _rows(log_dir)  # the monitored server has stopped: every row is committed

    off, on = common.median(rates["off"]), common.median(rates["on"])
    cpu = {name: common.median([r["cpu_ms"] for r in results[name]]) for name in results}
    rows = []
    for name, label in (("off", "served, monitoring off"), ("on", "served, --monitor (every image logged)")):
        errors = sum(r["errors"] for r in results[name])
        p50 = common.median([r["p50"] for r in results[name]])
        p99 = common.median([r["p99"] for r in results[name]])
        median = common.median(rates[name])
        rows.append(
            [label, median, common.spread(rates[name]), f"{p50:.1f}", f"{p99:.1f}", errors, f"{median / off:.3f}x"]
            + [f"{cpu[name]:.2f}", f"{cpu['off'] / cpu[name]:.3f}x"]
        )
    sent = args.rounds * args.requests + min(args.requests // 5, 500)
    common.print_table(
        f"Monitoring overhead: resnet18 (digits 16 px, ONNX Runtime) to {args.clients} concurrent clients on 127.0.0.1",
        ["", "images/s (median)", "rounds min..max", "p50 ms", "p99 ms", "errors", "of monitoring off"]
        + ["server CPU ms/image", "images per CPU-s, of off"],
        rows,
        note=f"{args.rounds} alternated rounds of {args.requests:,} one-PNG requests per server after a warm-up; "
        f"{logged:,} rows logged of {sent:,} images sent to the monitored server. Servers and load generator "
        f"share the {os.cpu_count()} cores.",
    )
    common.verdict(on >= TARGET * off, f"with monitoring {on / off:.3f}x the throughput without (target >= {TARGET}x)")
    common.verdict(
        cpu["off"] >= TARGET * cpu["on"],
        f"server CPU per image with monitoring {cpu['on']:.2f} ms against {cpu['off']:.2f} ms: "
        f"{cpu['off'] / cpu['on']:.3f}x the images per CPU-second (target >= {TARGET}x)",
    )
    common.verdict(all(r["errors"] == 0 for rs in results.values() for r in rs), "zero errors")
    common.verdict(logged == sent, f"every image sent to the monitored server logged ({logged:,} of {sent:,})")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads so far (Linux /proc); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rows(folder: Path) -> int:
    with sqlite3.connect(folder / "predictions.db") as conn:
        return conn.execute("SELECT count(*) FROM predictions").fetchone()[0]


if __name__ == "__main__":
    main()
