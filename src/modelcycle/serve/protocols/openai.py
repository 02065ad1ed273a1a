"""The OpenAI-compatible API for language models: ``GET /v1/models``, ``POST /v1/chat/completions``
and ``POST /v1/completions``, whole answers or server-sent events, in OpenAI's wire format, so the
official ``openai`` client (and anything built on it) works unchanged with ``base_url`` pointed here.

The image server's pieces are reused as they are: the Bearer key (auth.py), body size and time
limits (limits.py), Prometheus metrics (metrics.py, plus token counters) and uvicorn's graceful
shutdown (server.py). Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
so clients raise their usual exceptions; bad input is always a 4xx, never a 500.

Nothing a request sends runs on the event loop beyond parsing it: its size is checked first
(``serve.max_prompt_chars``, ``serve.max_prompts``, and a prompt too long for the context
whatever its tokens), and the chat template and tokenizer run in a thread, so health probes and
other clients are answered while a large prompt is read. Even a bug's 500 leaves the
connection open (``NeverReset``): the client's next request on it must not be reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Counter, Gauge
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelcycle.config import ServeSection
from modelcycle.errors import UserError
from modelcycle.lm.generate import Generation, GenerationStream, Piece, PromptTooLong
from modelcycle.lm.load import load_lm
from modelcycle.lm.sampling import Sampling
from modelcycle.packages import Package
from modelcycle.serve.lm_runner import ServedLM
from modelcycle.serve.openai_schemas import ChatRequest, CompletionRequest, SamplingRequest
from modelcycle.serve.state import ServeState

log = logging.getLogger("modelcycle.serve")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 503: "overloaded"}


NAME = "openai"
HOLDS = "lms"  # the ServeState slot its models go in
PREFIXES = ("/v1/chat/", "/v1/completions", "/v1/models/")  # paths whose errors take OpenAI's shape


def load(name: str, path: Path, package: Package, cfg: ServeSection) -> ServedLM:
    """A language model (or an adapter folded into its base) behind its generation worker."""
    return ServedLM(name, load_lm(path), str(path), cfg.max_queue, cfg.max_active)


def describe(m: ServedLM, started: int) -> dict:
    return {
        "id": m.name,
        "object": "model",
        "created": started,
        "owned_by": "modelcycle",
        "context_length": m.lm.context_length,
    }


def add_routes(app: FastAPI, state: ServeState, auth: list) -> None:
    cfg, served, metrics = state.cfg, state.lms, state.metrics
    tokens = Counter(
        "modelcycle_lm_tokens_total", "Tokens read and generated", ["model", "kind"], registry=metrics.registry
    )
    waiting = Gauge(
        "modelcycle_lm_pending_requests", "Requests queued or generating", ["model"], registry=metrics.registry
    )
    for m in served.values():
        waiting.labels(m.name).set_function(lambda m=m: m.pending)

    def pick(name: str | None) -> ServedLM:
        if name is None and len(served) == 1:  # as vLLM: the one model served needs no name
            return next(iter(served.values()))
        if name is None:
            raise _Invalid(f"model: several models are served; name one of {', '.join(served)}", "model")
        if name not in served:
            raise HTTPException(404, f"The model '{name}' does not exist on this server; it serves {', '.join(served)}")
        return served[name]

    @app.get("/v1/models/{name:path}", tags=["v1"], dependencies=auth)
    async def get_model(name: str) -> dict:
        return describe(pick(name), state.started)

    @app.post("/v1/chat/completions", tags=["v1"], dependencies=auth)
    async def chat_completions(body: ChatRequest) -> Response:
        model = pick(body.model)
        sampling = settings(body)
        messages = [m.as_template_message() for m in body.messages]
        size(model, [sum(len(m["role"]) + len(m["content"]) for m in messages)], "messages")

        def tokenized() -> GenerationStream:
            ids = _user_error(model.lm.chat_ids, messages, param="messages")
            return _user_error(model.lm.stream, [ids], sampling, param="messages")  # checks the context

        return await answer(model, body, await asyncio.to_thread(tokenized), chat=True)

    @app.post("/v1/completions", tags=["v1"], dependencies=auth)
    async def completions(body: CompletionRequest) -> Response:
        model = pick(body.model)
        prompts = _user_error(lambda: body.prompts, param="prompt")
        if len(prompts) > cfg.max_prompts:
            raise _Invalid(
                f"prompt: {len(prompts)} prompts in one request; this server takes at most {cfg.max_prompts} "
                "(serve.max_prompts); send them in several requests",
                "prompt",
            )
        sampling = settings(body)
        size(model, [len(p) for p in prompts], "prompt")
        stream = await asyncio.to_thread(_user_error, model.lm.stream, prompts, sampling, param="prompt")
        return await answer(model, body, stream, chat=False)

    def settings(body: SamplingRequest) -> Sampling:
        """The request's sampling, checked before anything is tokenised: unsupported fields and
        the token limit are 400s that cost no work."""
        _user_error(body.refuse_unsupported)
        wanted = body.wanted_tokens
        if wanted is not None and wanted > cfg.max_new_tokens:
            raise _Invalid(
                f"max_tokens={wanted} is over this server's limit of {cfg.max_new_tokens} "
                "(serve.max_new_tokens); ask for fewer",
                "max_tokens",
            )
        return _user_error(body.sampling, wanted or cfg.max_new_tokens)

    def size(model: ServedLM, chars: list[int], param: str) -> None:
        """Prompts too large to read are 400s before any tokenising: over ``serve.max_prompt_chars``
        in all, or more characters than the model's context could hold as tokens."""
        if sum(chars) > cfg.max_prompt_chars:
            raise _Invalid(
                f"{param}: {sum(chars):,} characters; this server reads at most {cfg.max_prompt_chars:,} a request "
                "(serve.max_prompt_chars); shorten the prompt",
                param,
                "prompt_too_large",
            )
        for i, count in enumerate(chars):
            _user_error(model.lm.check_chars, count, None if len(chars) == 1 else i, param=param)

    async def answer(model: ServedLM, body: SamplingRequest, stream: GenerationStream, chat: bool) -> Response:
        kind = "chat.completion" if chat else "text_completion"
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": model.name,
        }

        def count(results: list[Generation]) -> dict:
            prompt = sum(r.prompt_tokens for r in results)
            completion = sum(len(r.token_ids) for r in results)
            tokens.labels(model.name, "prompt").inc(prompt)
            tokens.labels(model.name, "completion").inc(completion)
            return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

        if not body.stream:
            results = await model.generate(stream, cfg.request_timeout_s)
            choices = [_choice(i, r.text, r.finish_reason, chat) for i, r in enumerate(results)]
            return JSONResponse({**head, "choices": choices, "usage": count(results)})

        model.check_room()  # a full queue is a 503 now, while the status line can still say so
        chunk = {**head, "object": kind + ".chunk" if chat else kind}

        async def events() -> AsyncIterator[str]:
            if chat:
                yield _sse({**chunk, "choices": [_delta(0, {"role": "assistant", "content": ""}, None)]})
            try:
                async for item in model.pieces(stream, cfg.request_timeout_s):
                    if isinstance(item, Piece):
                        piece = (
                            _delta(item.index, {"content": item.text}, None)
                            if chat
                            else _choice(item.index, item.text, None, False)
                        )
                        yield _sse({**chunk, "choices": [piece]})
                        continue
                    ends = [
                        _delta(i, {}, r.finish_reason) if chat else _choice(i, "", r.finish_reason, False)
                        for i, r in enumerate(item)
                    ]
                    yield _sse({**chunk, "choices": ends})
                    if body.include_usage:
                        yield _sse({**chunk, "choices": [], "usage": count(item)})
                    else:
                        count(item)
            except HTTPException as exc:  # queue full, timed out: the status line is sent, so say it in the stream
                yield _sse(_error_body(exc.status_code, str(exc.detail)))
            except Exception:
                log.exception("generation failed")
                yield _sse(_error_body(500, "internal error during generation; see the server log"))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class ErrorJSON(JSONResponse):
    """An error body as ASCII JSON: whatever a message quotes, it can be encoded."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


class NeverReset:
    """An exception that escapes the app becomes a JSON 500 (or, when the answer had begun, its
    clean end) and goes no further. Re-raised, it makes uvicorn close the connection, so the
    client's next request on it is reset, as if the server had crashed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"started": False, "ended": False}

        async def tracked(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["ended"] = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            log.exception("unhandled error")  # a 500 is always our bug: keep the traceback in the log
            if state["ended"]:
                return
            try:
                if not state["started"]:
                    body = _error_body(500, f"internal error ({type(exc).__name__}); see the server log")
                    await ErrorJSON(body, 500)(scope, receive, send)
                else:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            except Exception:  # the client is gone: nothing left to tell it
                pass


class _Invalid(HTTPException):
    """A 400 that names the request field at fault, as OpenAI's ``param``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(400, message)
        self.param, self.code = param, code


def _user_error(fn, *args, param: str | None = None):
    """``fn(*args)``, a UserError (an invalid setting, a prompt too long) becoming a 400 that
    blames the request field ``param``."""
    try:
        return fn(*args)
    except PromptTooLong as exc:
        raise _Invalid(str(exc), param, "context_length_exceeded") from None
    except UserError as exc:
        raise _Invalid(str(exc), param) from None


def _choice(index: int, text: str, finish: str | None, chat: bool) -> dict:
    if chat:
        return {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def _delta(index: int, delta: dict, finish: str | None) -> dict:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def http_error(exc: StarletteHTTPException) -> JSONResponse:
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = "no such endpoint; this server has /v1/models, /v1/chat/completions and /v1/completions"
    body = _error_body(exc.status_code, message, getattr(exc, "param", None), getattr(exc, "code", None))
    return ErrorJSON(body, exc.status_code, headers=exc.headers)


def invalid(exc: RequestValidationError) -> JSONResponse:
    # malformed JSON and wrong fields alike: a 400 naming the field, as OpenAI answers
    problems, first = [], None
    for err in exc.errors()[:10]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        first = first or where
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    return ErrorJSON(_error_body(400, "invalid request: " + "; ".join(problems), first), 400)


def bug(exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return ErrorJSON(_error_body(500, f"internal error ({type(exc).__name__}); see the server log"), 500)
