"""``POST /v1/predict``: our own endpoint for classifiers, images as JSON base64 or multipart
files, texts as ``{"texts": [...]}``; answered by the plain ASGI endpoint in serve/predict.py."""

from __future__ import annotations

from modelcycle.serve.limits import BodyLimits
from modelcycle.serve.metrics import MetricsMiddleware
from modelcycle.serve.models import load_classifier as load  # the classifiers KServe v2 serves
from modelcycle.serve.predict import PATH, PredictEndpoint, openapi_operation
from modelcycle.serve.replies import ERRORS_TEXT
from modelcycle.serve.state import ServeState

NAME = "predict_v1"
HOLDS = "models"  # the ServeState slot its models go in
__all__ = ["HOLDS", "NAME", "add_routes", "load"]


def add_routes(app, state: ServeState, auth: list) -> None:
    """``app`` is a :class:`modelcycle.serve.app.ServeApp`: the endpoint is one of its fast routes."""
    cfg = state.cfg
    limits = {"max_bytes": int(cfg.max_body_mb * 1e6), "timeout_s": cfg.body_timeout_s}
    endpoint = MetricsMiddleware(BodyLimits(PredictEndpoint(state, state.api_key), **limits), state.metrics)
    operation = openapi_operation(ERRORS_TEXT, state.api_key is not None, texts=bool(state.texts))
    app.fast_routes[PATH] = (endpoint, *operation)
