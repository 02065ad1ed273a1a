"""Reward models over HTTP (``POST /v1/score``): the protocol lives in
:mod:`modelcycle.serve.protocols.score`; these are the names callers and tests import."""

from __future__ import annotations

from fastapi import FastAPI

from modelcycle.config import ServeSection
from modelcycle.serve.app import build_app
from modelcycle.serve.protocols.score import ScoreRequest, ServedReward, is_reward_model, load_reward_models
from modelcycle.serve.state import ServeState

__all__ = ["ScoreRequest", "ServedReward", "create_score_app", "is_reward_model", "load_reward_models"]


def create_score_app(models: list[ServedReward], cfg: ServeSection, api_key: str | None = None) -> FastAPI:
    return build_app(ServeState([], cfg, rewards=models, api_key=api_key), ["score"])
