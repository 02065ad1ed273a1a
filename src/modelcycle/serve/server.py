"""Starting the server: load and warm the models, bind, run uvicorn until SIGTERM or Ctrl-C.

On SIGTERM uvicorn stops accepting connections and lets in-flight requests finish (up to
``serve.graceful_timeout_s``) before the batchers stop, so a rolling restart drops nothing.
"""

from __future__ import annotations

import gc
import socket

import numpy as np

from modelcycle.config import MonitorSection, ServeSection
from modelcycle.errors import UserError
from modelcycle.progress import info
from modelcycle.serve.auth import read_api_key
from modelcycle.serve.models import ServedModel, load_models


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port (0: any free one)"
        ) from None
    sock.listen(2048)
    return sock


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


def run(app, cfg: ServeSection, lines: list[str], endpoints: str, keyed: bool) -> None:
    """Bind and run ``app`` until SIGTERM or Ctrl-C; ``endpoints`` names its pages ({url} filled in)."""
    import uvicorn

    # torch, ONNX Runtime and FastAPI leave ~250k long-lived objects that every full garbage
    # collection would walk again (about a second each on these machines, the event loop blocked):
    # moved out of the collector's sight, collections only see what requests allocate
    gc.collect()
    gc.freeze()
    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    for line in lines:
        info(line)
    auth = f"Bearer key from ${cfg.api_key_env}" if keyed else "no API key"
    info(f"listening on {url}  ({endpoints.format(url=url)}; {auth})")
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http=getattr(app, "http_protocol", "auto"),  # the image server's: JSON for unknown methods
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=cfg.graceful_timeout_s,
            timeout_keep_alive=30,
        )
    )
    # uvicorn re-raises SIGTERM/SIGINT once shut down, so the exit status says what stopped it
    server.run(sockets=[sock])
