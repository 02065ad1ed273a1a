"""The HTTP API: our own JSON/multipart endpoint, the Open Inference Protocol (KServe v2) so
standard clients work unchanged, Prometheus metrics, a playground page and offline /docs.

Every error a client can cause is a 4xx with ``{"error": "..."}`` saying what to fix; a 5xx
means a bug or an overload (503 + Retry-After), never bad input.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from importlib.metadata import version as package_version
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from modelcycle.config import ServeSection
from modelcycle.errors import ConfigError
from modelcycle.progress import info
from modelcycle.serve import replies, schemas
from modelcycle.serve.auth import require_key
from modelcycle.serve.limits import BodyLimits
from modelcycle.serve.methods import JsonErrorsProtocol
from modelcycle.serve.metrics import MetricsMiddleware
from modelcycle.serve.models import ServedModel
from modelcycle.serve.protocols import MODULES, ORDER, openai, score
from modelcycle.serve.protocols.openai import NeverReset
from modelcycle.serve.replies import ERRORS, ERRORS_TEXT
from modelcycle.serve.state import ServeState

__all__ = ["ERRORS", "ERRORS_TEXT", "ServeApp", "ServeState", "build_app", "create_app", "docs_routes"]
STATIC = Path(__file__).parent / "static"


class ServeApp(FastAPI):
    """FastAPI with ``fast_routes``: paths answered by a plain ASGI app (wrapped in the same body
    limits and metrics), skipping FastAPI's per-request machinery; their OpenAPI operations are
    added to the spec by hand. HEAD is answered as GET without the body (FastAPI's routes take
    only the methods they declare), methods the HTTP parser does not know get a JSON 405
    (:mod:`modelcycle.serve.methods`, run by ``serve`` as uvicorn's protocol)."""

    fast_routes: dict[str, tuple[object, dict, dict]]  # path: (ASGI app, POST operation, schemas)
    http_protocol = JsonErrorsProtocol
    head_as_get = True

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            if scope["method"] == "HEAD" and self.head_as_get:  # uvicorn sends no body for HEAD, as it still sees HEAD
                scope = {**scope, "method": "GET"}
            if (fast := self.fast_routes.get(scope["path"])) is not None:
                return await fast[0](scope, receive, send)
        await super().__call__(scope, receive, send)

    def allowed_methods(self, path: str | None) -> list[str] | None:
        """The methods ``path`` answers, None when no route has it; every method any route
        answers when ``path`` is None (the Allow header for a request the parser could not read)."""
        if path is None:
            return ["GET", "HEAD", "POST"]
        if path in self.fast_routes:
            return ["POST"]
        methods: set[str] = set()
        scope = {"type": "http", "path": path, "root_path": "", "method": "GET"}
        for route in self.router.routes:
            if route.matches(scope)[0] != Match.NONE:
                methods |= getattr(route, "methods", None) or {"GET"}  # a mount (static files): GET
        if not methods:
            return None
        return sorted(methods | {"HEAD"} if "GET" in methods else methods)

    def openapi(self) -> dict:
        if self.openapi_schema is None:
            spec = super().openapi()
            for path, (_, operation, components) in self.fast_routes.items():
                spec["paths"][path] = {"post": operation}
                spec.setdefault("components", {}).setdefault("schemas", {}).update(components)
            self.openapi_schema = spec
        return self.openapi_schema


STYLES = {  # error replies by protocol: (http_error, invalid, bug); bug None: NeverReset answers
    "predict_v1": (replies.http_error, replies.invalid, replies.bug),
    "kserve_v2": (replies.http_error, replies.invalid, replies.bug),
    "openai": (openai.http_error, openai.invalid, openai.bug),
    "score": (score.http_error, score.invalid, openai.bug),
}
OWNED = {"openai": openai.PREFIXES, "score": score.PREFIXES}  # paths whose errors are that protocol's


def create_app(models: list[ServedModel], cfg: ServeSection, api_key: str | None = None, monitor=None) -> FastAPI:
    """The image (and text) classifier server: ``/v1/predict`` and KServe v2 over ``models``."""
    state = ServeState(models, cfg, api_key=api_key)
    if monitor is not None:  # drift gauges on /metrics next to latency
        state.monitor = monitor
        monitor.attach(state.metrics.registry)
    return build_app(state, ["predict_v1", "kserve_v2"])


def build_app(state: ServeState, protocols: list[str]) -> ServeApp:
    """One app over ``state``: the common routes (/metrics, health, /v1/models, /docs), then each
    protocol module's routes. Errors take the shape of the protocol that owns the path, else of
    the first protocol served."""
    cfg, api_key = state.cfg, state.api_key
    protocols = [name for name in ORDER if name in protocols]
    auth = [Depends(require_key(api_key))] if api_key else []  # no per-request dependency when open
    if cfg.metrics_auth and not api_key:
        raise ConfigError("serve.metrics_auth=true puts /metrics behind the API key: give one with --api-key-env NAME")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await state.start()
        yield
        await state.stop()  # uvicorn has let in-flight requests finish by now (graceful shutdown)
        info("server stopped: in-flight requests answered")

    served = [*state.models, *state.lms, *state.rewards]
    app = ServeApp(
        title="modelcycle serve",
        version=package_version("modelcycle"),
        description=f"Protocols: {', '.join(protocols)}. Metrics at `/metrics`. Served: " + ", ".join(served),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.serve = state
    app.fast_routes = {}
    classifiers = "predict_v1" in protocols
    if not classifiers:  # the LM and score servers: uvicorn's own parser, HEAD as the routes declare
        app.http_protocol, app.head_as_get = "auto", False
    app.add_middleware(BodyLimits, max_bytes=int(cfg.max_body_mb * 1e6), timeout_s=cfg.body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    if not classifiers or len(protocols) > 2:
        app.add_middleware(NeverReset)  # outermost: sees whatever the others let through
    _error_handlers(app, protocols)
    docs_routes(app)
    _common_routes(app, state, protocols, auth)
    for name in protocols:
        MODULES[name].add_routes(app, state, auth)
    return app


def _common_routes(app: ServeApp, state: ServeState, protocols: list[str], auth: list) -> None:
    cfg, metrics = state.cfg, state.metrics
    if state.images:

        @app.get("/", include_in_schema=False)
        async def playground() -> HTMLResponse:
            return HTMLResponse((STATIC / "index.html").read_text())

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=Response,
        dependencies=auth if cfg.metrics_auth else [],
    )
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models", tags=["v1"], responses=replies.ERRORS, dependencies=auth)
    async def list_models() -> dict:
        return models_listing(state, protocols)

    @app.get("/v2/health/live", tags=["v2"], response_model=schemas.Live)
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"], response_model=schemas.Ready)
    async def ready() -> JSONResponse:
        ok = state.ready
        # the Open Inference Protocol: 200 means ready, a 4xx not ready (probes read only the code)
        return JSONResponse({"ready": ok}, 200 if ok else 400)


def models_listing(state: ServeState, protocols: list[str]) -> dict:
    """``models`` for our clients (classifiers), ``object``/``data`` for OpenAI's; a server with
    several kinds lists every model in both, each entry with its task."""
    ours = [m.describe() for m in state.models.values()]
    theirs = [openai.describe(m, state.started) for m in state.lms.values()]
    theirs += [score.describe(m) for m in state.rewards.values()]
    if not theirs:
        return {"models": ours}
    if not ours and len(protocols) == 1:
        return {"object": "list", "data": theirs}
    tasks = {m.name: m.task for m in [*state.models.values(), *state.lms.values(), *state.rewards.values()]}
    for entry in ours:
        entry["task"] = tasks[entry["name"]]
    for entry in theirs:
        entry["task"] = tasks[entry["id"]]
    everyone = ours + [{"name": e["id"], "version": e.get("version"), "task": e["task"]} for e in theirs]
    data = theirs + [
        {"id": e["name"], "object": "model", "created": state.started, "owned_by": "modelcycle", "task": e["task"]}
        for e in ours
    ]
    return {"models": everyone, "object": "list", "data": data}


def _style(path: str, protocols: list[str]):
    for name in protocols:
        if path.startswith(OWNED.get(name, ("\0",))):
            return STYLES[name]
    return STYLES[protocols[0]]


def _error_handlers(app: FastAPI, protocols: list[str]) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _style(request.url.path, protocols)[0](exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _style(request.url.path, protocols)[1](exc)

    if "predict_v1" in protocols:  # the others leave a bug's 500 to NeverReset, as they always have

        @app.exception_handler(Exception)
        async def bug(request: Request, exc: Exception) -> JSONResponse:
            return _style(request.url.path, protocols)[2](exc)


def docs_routes(app: FastAPI) -> None:
    """/docs from Swagger UI files shipped in a package: the page works with no internet."""
    import swagger_ui_bundle

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )
