"""LM serving under concurrent clients: `modelcycle serve` (continuous batching) against a plain
transformers + FastAPI endpoint, as one writes it from the two libraries' docs: a synchronous
``POST /v1/chat/completions`` route (FastAPI runs it in its thread pool) that applies the chat
template and calls ``model.generate`` for each request.

Both serve bench_lm_serve.py's model (a Llama of width 256 and 6 layers with random weights, the
tests' byte-level BPE, written once as a package) on 127.0.0.1 to the same load: 16 concurrent
clients, each sending ``REQUESTS`` greedy chats of at most ``TOKENS`` tokens one after another,
not streamed (the OpenAI request and reply shape on both). Samples: completion tokens. Quality:
whether both sides gave the same answers (greedy: they must). Whole process: the server's start,
a warm-up, the load, until it is stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import harness

PEER = "transformers + FastAPI"
QUALITY = "same answers"
CASES = {"lm_serve": "LM serving, 16 clients"}
CLIENTS = 16


def prepare(case: str, root: Path, quick: bool) -> dict:
    import bench_lm_serve

    package = bench_lm_serve.write_package(root, hidden=256, layers=6)
    requests, tokens = (1, 32) if quick else (3, 64)
    return {
        "package": str(package),
        "requests": requests,
        "tokens": tokens,
        "what": f"{CLIENTS} clients x {requests} greedy chats of up to {tokens} tokens, not streamed",
    }


def serve(side: str, case: str, root: Path, threads: int) -> dict:
    import hashlib
    import json

    s = harness.settings(root)
    port = harness.free_port()
    if side == "modelcycle":
        command = [sys.executable, "-m", "modelcycle", "serve", s["package"], "--port", str(port)]
        command += ["serve.max_active=32", "serve.max_new_tokens=256", "serve.max_queue=256"]
        health = "/v2/health/ready"
    else:
        command, health = [sys.executable, __file__, "fastapi", s["package"], str(port)], "/health"
    server = harness.Server(command, port, health, threads, root / f"server-{side}.log")
    try:
        load(server.url, 2, 1, 4)  # warm-up: first requests pay for lazy set-up
        seconds, tokens, answers = load(server.url, CLIENTS, s["requests"], s["tokens"])
    finally:
        usage = server.stop()
    digest = hashlib.sha256(json.dumps(sorted(answers.items())).encode()).hexdigest()[:12]
    return {"samples": tokens, "seconds": seconds, "quality": digest, **usage}


def load(url: str, clients: int, requests: int, tokens: int) -> tuple[float, int, dict[str, str]]:
    """``clients`` concurrent clients, ``requests`` chats each: (seconds, completion tokens, the
    answer to each "client/request")."""
    import asyncio
    import time

    import httpx

    from bench_lm_serve import TOPICS

    async def client_loop(i: int, client: httpx.AsyncClient, answers: dict, made: list) -> None:
        for r in range(requests):
            prompt = f"Explain {TOPICS[(i + r) % len(TOPICS)]} ({i}, {r})"
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "temperature": 0}
            response = await client.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            reply = response.json()
            answers[f"{i}/{r}"] = reply["choices"][0]["message"]["content"]
            made.append(reply["usage"]["completion_tokens"])

    async def main() -> tuple[float, int, dict]:
        answers, made = {}, []
        limits = httpx.Limits(max_connections=clients + 4)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
            started = time.perf_counter()
            await asyncio.gather(*[client_loop(i, client, answers, made) for i in range(clients)])
            return time.perf_counter() - started, sum(made), answers

    return asyncio.run(main())


def fastapi_main(package: str, port: int) -> None:
    """The peer: one FastAPI route over transformers' ``generate``."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(package)
    model = AutoModelForCausalLM.from_pretrained(package).eval()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        inputs = tokenizer.apply_chat_template(
            body["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=body["max_tokens"], do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        text = tokenizer.decode(new, skip_special_tokens=True)
        return {
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": inputs["input_ids"].shape[1], "completion_tokens": len(new)},
        }

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    fastapi_main(sys.argv[2], int(sys.argv[3]))
