"""The LM server's continuous batching (issue 16): greedy chat tokens/s at 1, 4 and 16 concurrent
streaming clients, batched (``serve.max_active`` 32: answers share each decoding step) against
one at a time (``serve.max_active=1``: the same server, each answer decoded alone while the
others wait), two ``modelcycle serve`` processes on 127.0.0.1 over the same model, measured in
alternating rounds. Also each request's time to first token (client side: from sending it to
the first streamed text), p50 and p99, and whether both servers gave the same text to every
request (they must: greedy).

The model is built here, with random weights (no network): the tests' tokenizer recipe and a
Llama of ``--hidden`` width and ``--layers`` layers (by default 256 and 6, about 5 M parameters).
Target: at 16 clients, batched >= 3x the tokens/s of one at a time.

    python benchmarks/bench_lm_serve.py [--quick] [--threads N] [--rounds N] [--tokens N]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

import common
from modelcycle.lm.model import package_writer
from modelcycle.serve.process import ServerProcess

sys.path.insert(0, str(common.REPO / "tests" / "lm"))  # the tests' tiny-model builder: one recipe, not two
from tiny_lm import build_model, build_tokenizer  # noqa: E402

CLIENTS = (1, 4, 16)
TARGET = 3.0
TOPICS = ["the for statement", "the with statement", "classes", "exceptions", "generators", "decorators", "modules"]


def write_package(folder: Path, hidden: int, layers: int, vocab: int = 2000, chars: int = 200_000) -> Path:
    """The chat model's package in ``folder/model``: a BPE of ``vocab`` tokens trained on ``chars``
    characters of the pydocs text, a random Llama of ``hidden`` width and ``layers`` layers."""
    tokenizer = build_tokenizer(vocab=vocab, chars=chars)
    model = build_model(tokenizer, hidden=hidden, layers=layers, heads=8, context=512)
    manifest = {"task": "sft", "backend": "transformers", "metrics": {}, "source_run": str(folder)}
    package_writer(model, tokenizer, None)(folder / "model", model.state_dict(), manifest)
    return folder / "model"


async def stream_chat(client: httpx.AsyncClient, prompt: str, tokens: int) -> tuple[str, int, float]:
    """(text, completion tokens, seconds to the first text) of one streamed greedy chat."""
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first, text, used = None, "", 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if chunk.get("usage"):
                used = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                piece = choice["delta"].get("content")
                if piece and first is None:
                    first = time.perf_counter() - started
                text += piece or ""
    return text, used, first if first is not None else time.perf_counter() - started


def load(url: str, clients: int, requests: int, tokens: int) -> tuple[float, list[float], dict]:
    """``clients`` concurrent clients, ``requests`` chats each, one after another: (tokens/s,
    times to first token, text per (client, request))."""

    async def client_loop(i: int, client: httpx.AsyncClient, out: dict, ttft: list, made: list) -> None:
        for r in range(requests):
            prompt = f"Explain {TOPICS[(i + r) % len(TOPICS)]} ({i}, {r})"
            text, used, first = await stream_chat(client, prompt, tokens)
            out[(i, r)] = text
            ttft.append(first)
            made.append(used)

    async def main() -> tuple[float, list[float], dict]:
        out, ttft, made = {}, [], []
        limits = httpx.Limits(max_connections=clients + 4)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
            started = time.perf_counter()
            await asyncio.gather(*[client_loop(i, client, out, ttft, made) for i in range(clients)])
            seconds = time.perf_counter() - started
        return sum(made) / seconds, ttft, out

    return asyncio.run(main())


def _metric(text: str, name: str) -> float:
    """The value of the series ``name`` (summed over its labels) in a Prometheus text page."""
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = common.make_parser(__doc__.splitlines()[0], "1 round, 2 requests per client, 32 tokens")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per concurrency (medians shown)")
    parser.add_argument("--requests", type=int, default=3, help="chats each client sends, one after another")
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens per chat")
    parser.add_argument("--hidden", type=int, default=256, help="the model's width")
    parser.add_argument("--layers", type=int, default=6, help="the model's layers")
    args = parser.parse_args()
    for name, value in (("rounds", 1), ("requests", 2), ("tokens", 32)):
        common.quick_default(args, name, value)
    common.console.print(common.environment_line(args.threads))
    env = {"OMP_NUM_THREADS": str(args.threads)}
    rows, ratios, same = [], {}, True
    with common.temp_dir("lm-serve", args.workdir, args.keep) as root:
        package = write_package(root / "bench-chat", args.hidden, args.layers)
        settings = ["serve.max_new_tokens=256", "serve.max_queue=256"]
        with (
            ServerProcess([package], *settings, "serve.max_active=32", env=env) as batched,
            ServerProcess([package], *settings, "serve.max_active=1", env=env) as alone,
        ):
            servers = {"one at a time": alone.url, "batched": batched.url}
            for url in servers.values():
                load(url, 2, 1, 4)  # warm-up: first requests pay for lazy set-up
            for clients in CLIENTS:
                runs = {
                    name: (lambda url=url, clients=clients: load(url, clients, args.requests, args.tokens))
                    for name, url in servers.items()
                }
                results = {name: [] for name in servers}
                for r in range(args.rounds):
                    for name in servers if r % 2 == 0 else reversed(list(servers)):
                        results[name].append(runs[name]())
                rate = {name: statistics.median(x[0] for x in found) for name, found in results.items()}
                ttft = {name: [t for x in found for t in x[1]] for name, found in results.items()}
                agree = all(x[2] == results["one at a time"][0][2] for found in results.values() for x in found)
                same &= agree
                ratios[clients] = common.ratio(rate["batched"], rate["one at a time"])
                rows.append(
                    [
                        clients,
                        rate["one at a time"],
                        rate["batched"],
                        ratios[clients],
                        statistics.median(ttft["one at a time"]),
                        quantile(ttft["one at a time"], 0.99),
                        statistics.median(ttft["batched"]),
                        quantile(ttft["batched"], 0.99),
                        agree,
                    ]
                )
            metrics = httpx.get(batched.url + "/metrics").text
    common.print_table(
        f"greedy chat, {args.requests} requests per client x {args.tokens} tokens, median of {args.rounds} rounds "
        f"(hidden {args.hidden}, {args.layers} layers, torch threads {args.threads})",
        [
            "clients",
            "one at a time tok/s",
            "batched tok/s",
            "ratio",
            "TTFT p50 alone (s)",
            "TTFT p99 alone (s)",
            "TTFT p50 batched (s)",
            "TTFT p99 batched (s)",
            "same text",
        ],
        rows,
    )
    steps = _metric(metrics, "modelcycle_lm_batch_size_count")
    common.console.print(
        f"batched server: {steps:.0f} decoding steps, "
        f"{_metric(metrics, 'modelcycle_lm_batch_size_sum') / max(steps, 1):.1f} answers per step on average"
    )
    common.verdict(
        ratios[16] >= TARGET, f"at 16 clients batched is {ratios[16]:.2f}x one at a time (target {TARGET:g}x)"
    )
    common.verdict(same, "every request got the same text batched and one at a time (greedy)")


if __name__ == "__main__":
    main()
