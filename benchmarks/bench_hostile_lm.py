"""The LM server under hostile load (issue 14): 32 concurrent chat clients, alone (the baseline)
and then with a 10 MB prompt, a 300-prompt stream and a long 16-prompt stream mixed in, against a
real ``modelcycle serve`` on 127.0.0.1 (the tests' random tiny chat model, default limits).

Throughout, a separate thread probes ``GET /v2/health/live`` every 50 ms on its own connection.
Target: health probes answer within 1 s in both phases, no 5xx and no reset connection; the
chats' latency with the hostile requests is printed beside the baseline's, with the ratio.

    python benchmarks/bench_hostile_lm.py [--quick] [--threads N] [--rounds N]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

import common
from modelcycle.lm.model import package_writer
from modelcycle.serve.process import ServerProcess

sys.path.insert(0, str(common.REPO / "tests" / "lm"))  # the tests' tiny-model builder: one recipe, not two
from tiny_lm import build_model, build_tokenizer  # noqa: E402

CLIENTS = 32
HEALTH_TARGET_S = 1.0
CHAT = {"messages": [{"role": "user", "content": "Explain the for statement"}], "max_tokens": 32, "temperature": 0.7}


def write_package(folder: Path) -> Path:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    manifest = {"task": "sft", "backend": "transformers", "metrics": {}, "source_run": str(folder)}
    package_writer(model, tokenizer, None)(folder / "model", model.state_dict(), manifest)
    return folder / "model"


class Prober(threading.Thread):
    """GET /v2/health/live every 50 ms until stopped; the latencies and any failure."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.latencies, self.failures = url, [], 0
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.done.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get("/v2/health/live").status_code == 200
                except httpx.TransportError:
                    ok = False
                self.latencies.append(time.perf_counter() - started)
                self.failures += not ok
                time.sleep(0.05)


class Tally:
    """Status codes, transport errors (a reset connection among them) and chat latencies."""

    def __init__(self):
        self.statuses: list[int] = []
        self.transport_errors = 0
        self.chat_seconds: list[float] = []
        self.hostile: list[tuple[str, object, float]] = []

    async def send(self, client: httpx.AsyncClient, path: str, body: bytes, stream: bool = False) -> tuple[object, str]:
        headers = {"Content-Type": "application/json"}
        try:
            if not stream:
                response = await client.post(path, content=body, headers=headers)
                self.statuses.append(response.status_code)
                return response.status_code, response.text
            async with client.stream("POST", path, content=body, headers=headers) as response:
                text = "".join([line + "\n" async for line in response.aiter_lines()])
                self.statuses.append(response.status_code)
                return response.status_code, text
        except httpx.TransportError as exc:
            self.transport_errors += 1
            return type(exc).__name__, ""

    async def chats(self, url: str, rounds: int) -> None:
        body = json.dumps({"model": "tiny-chat", **CHAT}).encode()
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:  # one keep-alive connection
            for _ in range(rounds):
                started = time.perf_counter()
                await self.send(client, "/v1/chat/completions", body)
                self.chat_seconds.append(time.perf_counter() - started)

    async def one(self, url: str, name: str, path: str, body: bytes, stream: bool) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            started = time.perf_counter()
            status, text = await self.send(client, path, body, stream)
            cut = stream and status == 200 and '"error"' in text  # cut off inside the stream
            self.hostile.append((name + (" (error event)" if cut else ""), status, time.perf_counter() - started))


def hostile_bodies() -> list[tuple[str, str, bytes, bool]]:
    """(name, path, body, streamed), built before the clock starts (10 MB of JSON takes a while)."""
    huge = {"model": "tiny-chat", "messages": [{"role": "user", "content": "word " * 2_000_000}]}
    many = {"model": "tiny-chat", "prompt": ["def f("] * 300, "max_tokens": 64, "stream": True}
    long = {"model": "tiny-chat", "prompt": ["The with statement"] * 16, "max_tokens": 64, "stream": True}
    return [
        ("10 MB chat prompt", "/v1/chat/completions", json.dumps(huge).encode(), False),
        ("300-prompt stream", "/v1/completions", json.dumps(many).encode(), True),
        ("16-prompt stream, 64 tokens", "/v1/completions", json.dumps(long).encode(), True),
    ]


def phase(url: str, rounds: int, hostile: bool) -> tuple[Tally, Prober, float]:
    tally, prober = Tally(), Prober(url)
    extra = hostile_bodies() if hostile else []

    async def main() -> None:
        jobs = [tally.chats(url, rounds) for _ in range(CLIENTS)]
        jobs += [tally.one(url, name, path, body, stream) for name, path, body, stream in extra]
        await asyncio.gather(*jobs)

    prober.start()
    started = time.perf_counter()
    asyncio.run(main())
    seconds = time.perf_counter() - started
    prober.done.set()
    prober.join()
    return tally, prober, seconds


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1] if len(values) > 1 else float("nan")


def main() -> None:
    parser = common.make_parser(__doc__.splitlines()[0], "2 chats per client instead of 4")
    parser.add_argument("--rounds", type=int, default=4, help="chats each of the 32 clients sends, one after another")
    args = parser.parse_args()
    common.quick_default(args, "rounds", 2)
    common.console.print(common.environment_line(args.threads))
    with common.temp_dir("hostile-lm", args.workdir, args.keep) as root:
        package = write_package(root / "tiny-chat")
        settings = ["serve.max_new_tokens=64"]
        with ServerProcess([package], *settings, env={"OMP_NUM_THREADS": str(args.threads)}) as server:
            phase(server.url, 1, hostile=False)  # warm-up: first requests pay for lazy set-up
            clean = phase(server.url, args.rounds, hostile=False)
            mixed = phase(server.url, args.rounds, hostile=True)
    rows = []
    for label, pick in [
        ("chat latency p50 (s)", lambda t, p, s: statistics.median(t.chat_seconds)),
        ("chat latency p99 (s)", lambda t, p, s: quantile(t.chat_seconds, 0.99)),
        ("health probe max (s)", lambda t, p, s: max(p.latencies)),
        ("health probe p99 (s)", lambda t, p, s: quantile(p.latencies, 0.99)),
        ("health probes", lambda t, p, s: len(p.latencies)),
        ("phase wall time (s)", lambda t, p, s: s),
        ("5xx answers", lambda t, p, s: sum(code >= 500 for code in t.statuses)),
        ("reset / transport errors", lambda t, p, s: t.transport_errors + p.failures),
    ]:
        a, b = pick(*clean), pick(*mixed)
        rows.append([label, a, b, common.ratio(b, a) if isinstance(a, float) else "-"])
    common.print_table(
        f"LM server, {CLIENTS} concurrent chats x {args.rounds} ({CHAT['max_tokens']} tokens each)",
        ["", "chats alone (baseline)", "with hostile requests", "ratio"],
        rows,
    )
    common.print_table("hostile requests", ["request", "status", "seconds"], mixed[0].hostile)
    worst = max(max(clean[1].latencies), max(mixed[1].latencies))
    errors = sum(t.transport_errors + p.failures for t, p, _ in (clean, mixed))
    server_errors = sum(code >= 500 for t, _, _ in (clean, mixed) for code in t.statuses)
    common.console.print(f"max health latency: {worst:.3f} s")
    common.verdict(worst < HEALTH_TARGET_S, f"health probes answered within {HEALTH_TARGET_S:g} s throughout")
    common.verdict(server_errors == 0 and errors == 0, f"{server_errors} 5xx answers, {errors} reset connections")


if __name__ == "__main__":
    main()
