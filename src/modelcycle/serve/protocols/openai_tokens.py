"""vLLM's tokenizer routes beside the OpenAI API: ``GET /tokenizer_info``, ``POST /tokenize`` and
``POST /detokenize``, in vLLM's shapes. Evaluation harnesses look for them: lm-evaluation-harness'
``local-completions`` tokenises through them when ``/tokenizer_info`` answers with an
``eos_token`` and ``/tokenize`` with ``tokens``, so it needs no copy of the model's tokenizer.

``/tokenize`` reads the text as the tokenizer does, special-token strings included (the harness
finds the eos id by tokenising ``eos_token``). It only tells a client which ids a text is: what
the client then sends as ids is its own explicit choice, while the *text* of chats and
completions never becomes control tokens (lm/chat_template.py). Sizes are bounded before any
work (``serve.max_prompt_chars``; ids below the vocabulary size) and tokenising runs off the
event loop. Unknown fields are 400s: vLLM's ``messages`` form is not implemented, and ignoring it
would tokenise the wrong thing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from modelcycle.lm.chat_template import template_source
from modelcycle.serve.openai_schemas import Text

PATHS = ("/tokenizer_info", "/tokenize", "/detokenize")


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: Text
    add_special_tokens: bool = True  # vLLM's default: what the tokenizer adds around a sequence (a bos)


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]


def add_routes(app: FastAPI, auth: list, pick: Callable, checked: Callable, too_long: Callable) -> None:
    """``pick(name)``: the served model; ``checked(fn, *args, param=)``: ``fn`` with its UserError
    as a 400 naming ``param``; ``too_long(param, count)``: a 400 for more than the server reads."""

    @app.get("/tokenizer_info", tags=["tokenizer"], dependencies=auth)
    async def tokenizer_info(model: str | None = None) -> dict:
        lm = pick(model).lm
        tokenizer = lm.tokenizer
        names = ("eos_token", "bos_token", "pad_token", "unk_token")
        return {
            "tokenizer_class": type(tokenizer).__name__,
            **{name: getattr(tokenizer, name, None) for name in names},
            "chat_template": template_source(tokenizer),
            "model_max_length": lm.context_length,
            "vocab_size": lm.vocab_size,
        }

    @app.post("/tokenize", tags=["tokenizer"], dependencies=auth)
    async def tokenize(body: TokenizeRequest) -> dict:
        lm = pick(body.model).lm
        too_long("prompt", len(body.prompt))
        call = lm.tokenizer.__call__
        ids = await asyncio.to_thread(lambda: call(body.prompt, add_special_tokens=body.add_special_tokens).input_ids)
        return {"count": len(ids), "max_model_len": lm.context_length, "tokens": ids}

    @app.post("/detokenize", tags=["tokenizer"], dependencies=auth)
    async def detokenize(body: DetokenizeRequest) -> dict:
        lm = pick(body.model).lm
        too_long("tokens", len(body.tokens))
        checked(lm.check_ids, body.tokens, param="tokens")
        return {"prompt": await asyncio.to_thread(lm.tokenizer.decode, body.tokens)}
