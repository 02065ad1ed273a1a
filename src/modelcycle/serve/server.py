"""Starting the server: open every package, give it the protocols its task plugin names (a
downloaded folder: its files), let those protocols load its model, warm it, bind, run uvicorn
until SIGTERM or Ctrl-C. One process hosts image classifiers, text classifiers, language models
and reward models side by side.

On SIGTERM uvicorn stops accepting connections and lets in-flight requests finish (up to
``serve.graceful_timeout_s``) before the batchers stop, so a rolling restart drops nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelcycle.config import MonitorSection, ServeSection
from modelcycle.errors import UserError
from modelcycle.packages import Package, open_package
from modelcycle.serve import protocols
from modelcycle.serve.auth import read_api_key
from modelcycle.serve.http import run
from modelcycle.serve.models import model_name
from modelcycle.serve.state import ServeState

ENDPOINTS = {
    "predict_v1": "playground {url}/",
    "openai": "OpenAI API {url}/v1",
    "score": "POST {url}/v1/score",
}


def warm_up(models: list, batch: int) -> None:
    """One call per batch size the batcher will use first, so no client pays for lazy set-up."""
    for served in models:
        for size in sorted({1, batch}):
            if getattr(served, "texts", False):
                served.predictor(served.encode(["warm up"] * size))
            else:
                served.predictor(np.zeros((size, *served.input_shape), np.float32))


def protocols_of(specs: list[str]) -> list[tuple[str, Path, tuple[str, ...]]]:
    """(name, path, protocols) per ``runs/a`` or ``name=runs/a``; names must be unique (URL paths)."""
    return [(name, path, chosen) for name, path, _, chosen in _opened(specs)]


def _opened(specs: list[str]) -> list[tuple[str, Path, Package, tuple[str, ...]]]:
    out: list[tuple[str, Path, Package, tuple[str, ...]]] = []
    for spec in specs:
        name, _, path = spec.rpartition("=")
        path = Path(path)
        name = name or model_name(path)
        if any(taken == name for taken, *_ in out):
            raise UserError(f"two models are named {name!r}; name them apart, e.g. {name}-v2={path}")
        package = open_package(path)
        out.append((name, path, package, protocols.for_package(package)))
    return out


def load_state(specs: list[str], cfg: ServeSection, api_key: str | None = None) -> tuple[ServeState, list[str]]:
    """The server state over every model in ``specs``, and the protocols they need. Each protocol
    module loads the models it answers for (``load``) into its slot of the state (``HOLDS``);
    protocols that share a loader (/v1/predict and v2) load a model once."""
    held: dict[str, list] = {"models": [], "lms": [], "rewards": []}
    wanted: set[str] = set()
    for name, path, package, chosen in _opened(specs):
        wanted.update(chosen)
        loaders = {(protocols.MODULES[p].load, protocols.MODULES[p].HOLDS): None for p in chosen}
        for load, slot in loaders:
            served = load(name, path, package, cfg)
            served.task = protocols.task_of(package)
            held[slot].append(served)
    state = ServeState(held["models"], cfg, lms=held["lms"], rewards=held["rewards"], api_key=api_key)
    return state, sorted(wanted, key=protocols.ORDER.index)


def serve(specs: list[str], cfg: ServeSection, monitoring: MonitorSection | None = None) -> None:
    """``monitoring`` with a ``dir``: log the image classifiers' predictions there and export
    drift (docs/monitor.md)."""
    from modelcycle.serve.app import build_app

    api_key = read_api_key(cfg.api_key_env)
    state, served = load_state(specs, cfg, api_key)
    images = list(state.images.values())
    if monitoring is not None and monitoring.dir and images:
        from modelcycle.monitor.live import start_monitor

        state.monitor = start_monitor(images, monitoring)
        state.monitor.attach(state.metrics.registry)  # drift gauges on /metrics next to latency
    warm_up(list(state.models.values()), cfg.max_batch_size)
    for lm in state.lms.values():
        lm.warm_up()
    app = build_app(state, served)
    lines = [_line(m) for m in state.models.values()]
    lines += [
        f"serving {m.name} ({m.path}, context {m.lm.context_length} tokens, {m.lm.device})" for m in state.lms.values()
    ]
    lines += [f"serving {m.name} (version {m.version}, reward model)" for m in state.rewards.values()]
    endpoints = [ENDPOINTS[p] for p in served if p in ENDPOINTS]
    endpoints = "  ".join([*endpoints, "docs {url}/docs", "metrics {url}/metrics"])
    run(app, cfg, lines, endpoints, api_key is not None)


def _line(m) -> str:
    texts = ", texts" if getattr(m, "texts", False) else ""
    return f"serving {m.name} (version {m.version}, {m.predictor.backend}, {len(m.classes)} classes{texts})"
