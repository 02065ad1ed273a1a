"""Reward models over HTTP: ``POST /v1/score`` scores answers to a prompt with a package made
by ``modelcycle lm reward`` (``modelcycle serve runs/lm-reward``).

Request: ``{"model": "lm-reward", "prompt": "question" | [messages], "responses": ["answer", ...]}``
(``model`` may be left out when one model is served); answer: ``{"model", "scores": [...]}``, one
score per response, higher is better. Scoring runs in a worker thread, one request at a time per
model, so the event loop keeps answering health checks. The image server's Bearer key, body
limits and Prometheus metrics are reused as they are; the LM server's guards too: text is valid
Unicode (a lone surrogate is a 422), a request's characters are bounded by
``serve.max_prompt_chars`` before any tokenising (400), a bug's 500 leaves the connection open,
and a chat template that fails is an error when the server starts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock

from fastapi import FastAPI, HTTPException
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelcycle.config import ServeSection
from modelcycle.errors import UserError
from modelcycle.lm.chat_template import chat_ids
from modelcycle.packages import Package
from modelcycle.serve.openai_schemas import Text
from modelcycle.serve.protocols.openai import ErrorJSON
from modelcycle.serve.state import ServeState
from modelcycle.tasks.reward import reward_scores


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(pattern="^(system|user|assistant)$")
    content: Text


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Text | None = None
    prompt: Text | list[Message] = Field(min_length=1)
    responses: list[Text] = Field(min_length=1, max_length=256)

    @property
    def chars(self) -> int:
        asked = len(self.prompt) if isinstance(self.prompt, str) else sum(len(m.content) for m in self.prompt)
        return asked + sum(len(r) for r in self.responses)


class ScoreResponse(BaseModel):
    object: str = "score"
    model: str
    scores: list[float]


@dataclass
class ServedReward:
    name: str
    version: str
    model: object
    tokenizer: object
    max_length: int
    task: str | None = None  # what /v1/models shows: the package's task
    lock: Lock = field(default_factory=Lock)

    def score(self, messages: list[dict[str, str]], responses: list[str]) -> list[float]:
        with self.lock:
            return reward_scores(
                self.model, self.tokenizer, [messages] * len(responses), responses, self.max_length
            ).tolist()


NAME = "score"
HOLDS = "rewards"  # the ServeState slot its models go in
PREFIXES = ("/v1/score",)


def load(name: str, path: Path, package: Package, cfg: ServeSection) -> ServedReward:
    """A reward model package: a sequence classifier with one output, and the ``max_length`` its
    training recorded. Its chat template, if it has one, is tried now, not on the first request."""
    if package.manifest is None:  # the max_length its scores were trained at is recorded there
        raise UserError(
            f"{package.folder} is not a reward model package (no modelcycle.json): /v1/score serves a "
            "`modelcycle lm reward` run or its model/ package"
        )
    loaded = package.load_scorer()
    if getattr(loaded.tokenizer, "chat_template", None):
        chat_ids(loaded.tokenizer, [{"role": "user", "content": "Hello"}], name=name)
    max_length = package.manifest["preprocessing"]["max_length"]
    return ServedReward(name, package.version, loaded.model, loaded.tokenizer, max_length)


def add_routes(app: FastAPI, state: ServeState, auth: list) -> None:
    cfg, served = state.cfg, state.rewards

    @app.post("/v1/score", response_model=ScoreResponse, dependencies=auth)
    async def score(body: ScoreRequest) -> dict:
        if body.model is None and len(served) > 1:
            raise HTTPException(400, f'several models are served; name one in "model": {", ".join(served)}')
        name = body.model or next(iter(served))
        if name not in served:
            raise HTTPException(404, f"no model named {name!r}; served: {', '.join(served)}")
        if body.chars > cfg.max_prompt_chars:
            raise HTTPException(
                400,
                f"{body.chars:,} characters of prompt and responses; this server reads at most "
                f"{cfg.max_prompt_chars:,} a request (serve.max_prompt_chars); send fewer or shorter",
            )
        messages = (
            [{"role": "user", "content": body.prompt}]
            if isinstance(body.prompt, str)
            else [m.model_dump() for m in body.prompt]
        )
        try:
            scores = await asyncio.wait_for(
                asyncio.to_thread(served[name].score, messages, body.responses), cfg.request_timeout_s
            )
        except TimeoutError:
            raise HTTPException(
                504, f"scoring took longer than serve.request_timeout_s={cfg.request_timeout_s}"
            ) from None
        return {"model": name, "scores": scores}


def describe(m: ServedReward) -> dict:
    return {"id": m.name, "object": "model", "owned_by": "modelcycle", "task": m.task, "version": m.version}


def http_error(exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own shape, as this endpoint has always answered: ``{"detail": ...}``."""
    return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)


def invalid(exc: RequestValidationError) -> Response:
    return ErrorJSON({"detail": jsonable_encoder(exc.errors())}, 422)  # ASCII: quotes any input safely
