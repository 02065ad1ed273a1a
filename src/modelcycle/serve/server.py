"""Starting the server: load and warm the models, bind, run uvicorn until SIGTERM or Ctrl-C.

On SIGTERM uvicorn stops accepting connections and lets in-flight requests finish (up to
``serve.graceful_timeout_s``) before the batchers stop, so a rolling restart drops nothing.
"""

from __future__ import annotations

import numpy as np

from modelcycle.config import MonitorSection, ServeSection
from modelcycle.errors import UserError
from modelcycle.serve.auth import read_api_key
from modelcycle.serve.http import run
from modelcycle.serve.models import ServedModel, load_models


def warm_up(models: list[ServedModel], batch: int) -> None:
    """One call per batch size the batcher will use first, so no client pays for lazy set-up."""
    for served in models:
        for size in sorted({1, batch}):
            served.predictor(np.zeros((size, *served.input_shape), np.float32))


def serve(specs: list[str], cfg: ServeSection, monitoring: MonitorSection | None = None) -> None:
    """``monitoring`` with a ``dir``: log predictions there and export drift (docs/monitor.md)."""
    from modelcycle.serve.app import create_app

    api_key = read_api_key(cfg.api_key_env)
    if reward_models(specs):  # POST /v1/score (serve/score.py)
        from modelcycle.serve.score import serve_reward_models

        return serve_reward_models(specs, cfg, api_key)
    if language_models(specs):
        from modelcycle.serve.openai import serve_language_models

        return serve_language_models(specs, cfg, api_key)
    models = load_models(specs, cfg.backend, cfg.max_pixels)
    monitor = None
    if monitoring is not None and monitoring.dir:
        from modelcycle.monitor.live import start_monitor

        monitor = start_monitor(models, monitoring)
    warm_up(models, cfg.max_batch_size)
    app = create_app(models, cfg, api_key, monitor)
    lines = [f"serving {m.name} (version {m.version}, {m.predictor.backend}, {len(m.classes)} classes)" for m in models]
    run(app, cfg, lines, "playground {url}/  docs {url}/docs  metrics {url}/metrics", api_key is not None)


def language_models(specs: list[str]) -> bool:
    """True when every model is a causal language model (served by the OpenAI-compatible app)."""
    from modelcycle.lm.load import is_language_model

    return _all_of(specs, is_language_model, "language models")


def reward_models(specs: list[str]) -> bool:
    """True when every model is a reward model (served for ``POST /v1/score``)."""
    from modelcycle.serve.score import is_reward_model

    return _all_of(specs, is_reward_model, "reward models")


def _all_of(specs: list[str], is_kind, kind: str) -> bool:
    """One server hosts one kind of model: their APIs share paths such as ``/v1/models``."""
    kinds = {is_kind(spec.rpartition("=")[2]) for spec in specs}
    if len(kinds) > 1:
        raise UserError(f"{kind} and other models are served by separate servers; start one for each kind")
    return kinds == {True}
