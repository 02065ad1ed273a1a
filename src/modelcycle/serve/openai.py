"""The OpenAI-compatible server for language models: the protocol itself lives in
:mod:`modelcycle.serve.protocols.openai`; these are the names callers and tests import."""

from __future__ import annotations

from fastapi import FastAPI

from modelcycle.config import ServeSection
from modelcycle.serve.app import build_app
from modelcycle.serve.lm_runner import ServedLM
from modelcycle.serve.protocols.openai import ErrorJSON, NeverReset
from modelcycle.serve.state import ServeState

__all__ = ["ErrorJSON", "NeverReset", "create_lm_app"]


def create_lm_app(models: list[ServedLM], cfg: ServeSection, api_key: str | None = None) -> FastAPI:
    return build_app(ServeState([], cfg, lms=models, api_key=api_key), ["openai"])
