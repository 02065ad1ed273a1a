"""The OpenAI-compatible API for language models: ``GET /v1/models``, ``POST /v1/chat/completions``
and ``POST /v1/completions``, whole answers or server-sent events, in OpenAI's wire format, so the
official ``openai`` client (and anything built on it) works unchanged with ``base_url`` pointed here.

The image server's pieces are reused as they are: the Bearer key (auth.py), body size and time
limits (limits.py), Prometheus metrics (metrics.py, plus the LM's own) and uvicorn's graceful
shutdown (server.py). Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
so clients raise their usual exceptions; bad input is always a 4xx, never a 500.

Nothing a request sends runs on the event loop beyond parsing it: its size is checked first
(``serve.max_prompt_chars``, ``serve.max_prompts``, ``serve.max_n``, ``serve.max_stop``,
``serve.max_top_logprobs``, and a prompt too long for the context whatever its tokens), and the
chat template and tokenizer run in a thread, so health probes and other clients are answered
while a large prompt is read. Its answers (prompts x ``n``) then join the model's continuous
batch (``lm_runner.py``). Even a bug's 500 leaves the connection open (``NeverReset``): the
client's next request on it must not be reset.
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
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelcycle.config import ServeSection
from modelcycle.errors import UserError
from modelcycle.lm.answer import Answer
from modelcycle.lm.batching import answers as make_answers
from modelcycle.lm.defaults import model_defaults
from modelcycle.lm.generate import PromptTooLong
from modelcycle.lm.load import load_lm
from modelcycle.lm.sampling import Sampling
from modelcycle.packages import Package
from modelcycle.serve.lm_runner import Chunk, ServedLM
from modelcycle.serve.metrics import LMMetrics
from modelcycle.serve.openai_replies import Tokens, choice, delta, sse
from modelcycle.serve.openai_schemas import ChatRequest, CompletionRequest, Refused, SamplingRequest
from modelcycle.serve.protocols import openai_tokens
from modelcycle.serve.state import ServeState

log = logging.getLogger("modelcycle.serve")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 503: "overloaded"}


NAME = "openai"
HOLDS = "lms"  # the ServeState slot its models go in
PREFIXES = ("/v1/chat/", "/v1/completions", "/v1/models/", *openai_tokens.PATHS)  # errors in OpenAI's shape


def load(name: str, path: Path, package: Package, cfg: ServeSection) -> ServedLM:
    """A language model (or an adapter folded into its base) behind its generation worker, with
    its generation_config.json sampling defaults for the fields a request leaves out."""
    lm = load_lm(path)
    served = ServedLM(name, lm, str(path), cfg.max_queue, cfg.max_active)
    served.defaults = model_defaults(getattr(lm.model, "generation_config", None))
    return served


def describe(m: ServedLM, started: int) -> dict:
    return {
        "id": m.name,
        "object": "model",
        "created": started,
        "owned_by": "modelcycle",
        "context_length": m.lm.context_length,
    }


def add_routes(app: FastAPI, state: ServeState, auth: list) -> None:
    cfg, served = state.cfg, state.lms
    metrics = LMMetrics(state.metrics)
    for m in served.values():
        m.metrics = metrics
        metrics.pending.labels(m.name).set_function(lambda m=m: m.pending)

    def pick(name: str | None) -> ServedLM:
        if name is None and len(served) == 1:  # as vLLM: the one model served needs no name
            return next(iter(served.values()))
        if name is None:
            raise _Invalid(f"model: several models are served; name one of {', '.join(served)}", "model")
        if name not in served:
            raise HTTPException(404, f"The model '{name}' does not exist on this server; it serves {', '.join(served)}")
        return served[name]

    def too_long(param: str, count: int) -> None:
        if count > cfg.max_prompt_chars:
            raise _Invalid(
                f"{param}: {count:,} long; this server reads at most {cfg.max_prompt_chars:,} (serve.max_prompt_chars)",
                param,
                "prompt_too_large",
            )

    openai_tokens.add_routes(app, auth, pick, _user_error, too_long)

    @app.get("/v1/models/{name:path}", tags=["v1"], dependencies=auth)
    async def get_model(name: str) -> dict:
        return describe(pick(name), state.started)

    @app.post("/v1/chat/completions", tags=["v1"], dependencies=auth)
    async def chat_completions(body: ChatRequest) -> Response:
        model = pick(body.model)
        sampling, limit = settings(model, body)
        messages = [m.as_template_message() for m in body.messages]
        size(model, [sum(len(m["role"]) + len(m["content"]) for m in messages)], "messages")

        def tokenized() -> list[Answer]:
            ids = _user_error(model.lm.chat_ids, messages, param="messages")
            return _user_error(make_answers, model.lm, [ids], sampling, body.n, limit, param="messages")

        return await answer(model, body, await asyncio.to_thread(tokenized), None)

    @app.post("/v1/completions", tags=["v1"], dependencies=auth)
    async def completions(body: CompletionRequest) -> Response:
        model = pick(body.model)
        prompts = _user_error(lambda: body.prompts, param="prompt")
        if len(prompts) * body.n > cfg.max_prompts:
            raise _Invalid(
                f"prompt: {len(prompts)} prompts x n={body.n} answers in one request; this server makes at most "
                f"{cfg.max_prompts} (serve.max_prompts); send them in several requests",
                "prompt",
            )
        sampling, limit = settings(model, body)
        texts = [p for p in prompts if isinstance(p, str)]
        size(model, [len(p) for p in texts], "prompt")  # token ids: their count is checked exactly below
        for i, p in enumerate(prompts):
            if isinstance(p, list):
                _user_error(model.lm.check_ids, p, None if len(prompts) == 1 else i, param="prompt")
        made = await asyncio.to_thread(
            _user_error, make_answers, model.lm, prompts, sampling, body.n, limit, param="prompt"
        )
        echoed = [p if isinstance(p, str) else model.lm.tokenizer.decode(p) for p in prompts] if body.echo else None
        return await answer(model, body, made, echoed)

    def settings(model: ServedLM, body: SamplingRequest) -> tuple[Sampling, int]:
        """The request's sampling and token limit, checked before anything is tokenised:
        unsupported fields and values over the server's caps are 400s that cost no work."""
        _user_error(body.refuse_unsupported)
        top_param = "top_logprobs" if isinstance(body, ChatRequest) else "logprobs"
        caps = [
            ("n", body.n, cfg.max_n, "serve.max_n", "choices"),
            ("stop", len(body.stops()), cfg.max_stop, "serve.max_stop", "stop strings"),
            (top_param, body.top_logprobs_wanted or 0, cfg.max_top_logprobs, "serve.max_top_logprobs", "alternatives"),
            ("max_tokens", body.wanted_tokens or 0, cfg.max_new_tokens, "serve.max_new_tokens", "tokens"),
        ]
        for param, value, cap, key, what in caps:
            if value > cap:
                raise _Invalid(
                    f"{param}={value} is over this server's limit of {cap} {what} ({key}); ask for fewer", param
                )
        wanted = body.wanted_tokens
        if wanted is None:
            wanted = min(
                model.defaults.get("max_new_tokens") or body.DEFAULT_TOKENS or cfg.max_new_tokens, cfg.max_new_tokens
            )
        return _user_error(body.sampling, max(wanted, 1), model.defaults, body.seed), wanted

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

    async def answer(
        model: ServedLM, body: SamplingRequest, answers: list[Answer], echoed: list[str] | None
    ) -> Response:
        """``answers`` generated, whole or streamed; ``echoed``: completions' prompts, shown before
        their answers (``echo``)."""
        chat = isinstance(body, ChatRequest)
        kind = "chat.completion" if chat else "text_completion"
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": model.name,
        }
        tokens = Tokens(model.lm.tokenizer, model.lm.eos_ids, keep_stop=not chat)
        scored = body.top_logprobs_wanted is not None
        score_prompt = echoed is not None and scored

        def count(results: list[Answer]) -> dict:
            prompt = sum(r.prompt_tokens for r in results[:: body.n])  # each prompt once, whatever n
            completion = sum(len(r.token_ids) for r in results)
            metrics.tokens.labels(model.name, "prompt").inc(prompt)
            metrics.tokens.labels(model.name, "completion").inc(completion)
            return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

        def figures(made: list, offset: int = 0) -> dict | None:
            if not scored:
                return None
            return tokens.chat(made) if chat else tokens.completion(made, offset)

        def prefix(i: int, result: Answer) -> tuple[str, list]:
            """What echo shows before answer ``i``: its prompt, and the prompt's figures."""
            if echoed is None:
                return "", []
            return echoed[i // body.n], tokens.of_prompt(result) if scored else []

        if not body.stream:
            results = await model.generate(answers, cfg.request_timeout_s, score_prompt)
            choices = []
            for i, r in enumerate(results):
                text, before = prefix(i, r)
                choices.append(choice(i, text + r.text, r.finish_reason, chat, figures(before + tokens.of_answer(r))))
            return JSONResponse({**head, "choices": choices, "usage": count(results)})

        model.check_room()  # a full queue is a 503 now, while the status line can still say so
        chunk = {**head, "object": kind + ".chunk" if chat else kind}
        shown: set[int] = set()  # answers whose echo has gone out
        offsets = [0] * len(answers)  # characters of each answer so far (completions' text_offset)

        def piece(i: int, text: str, made: list, finish: str | None = None) -> dict:
            if i not in shown and echoed is not None:
                shown.add(i)
                before, scores = prefix(i, answers[i])
                text, made = before + text, scores + made
            if chat:
                return delta(i, {"content": text} if text or finish is None else {}, finish, figures(made))
            scores = figures(made, offsets[i])
            offsets[i] += sum(len(t) for t in scores["tokens"]) if scores else 0
            return choice(i, text, finish, False, scores)

        async def events() -> AsyncIterator[str]:
            if chat:
                roles = [delta(i, {"role": "assistant", "content": ""}, None) for i in range(len(answers))]
                yield sse({**chunk, "choices": roles})
            try:
                async for item in model.chunks(answers, cfg.request_timeout_s, score_prompt):
                    if item and isinstance(item[0], Chunk):
                        pieces = [
                            piece(c.index, c.text, tokens.generated(c.token_ids, c.logprobs, c.top_logprobs))
                            for c in item
                        ]
                        yield sse({**chunk, "choices": pieces})
                        continue
                    yield sse({**chunk, "choices": [piece(i, "", [], r.finish_reason) for i, r in enumerate(item)]})
                    if body.include_usage:
                        yield sse({**chunk, "choices": [], "usage": count(item)})
                    else:
                        count(item)
            except HTTPException as exc:  # queue full, timed out: the status line is sent, so say it in the stream
                yield sse(_error_body(exc.status_code, str(exc.detail)))
            except Exception:
                log.exception("generation failed")
                yield sse(_error_body(500, "internal error during generation; see the server log"))
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
    except Refused as exc:
        raise _Invalid(str(exc), exc.param) from None
    except UserError as exc:
        raise _Invalid(str(exc), param) from None


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
