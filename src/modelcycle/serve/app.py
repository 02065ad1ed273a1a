"""The HTTP API: our own JSON/multipart endpoint, the Open Inference Protocol (KServe v2) so
standard clients work unchanged, Prometheus metrics, a playground page and offline /docs.

Every error a client can cause is a 4xx with ``{"error": "..."}`` saying what to fix; a 5xx
means a bug or an overload (503 + Retry-After), never bad input.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from modelcycle.config import ServeSection
from modelcycle.errors import ConfigError, DataError
from modelcycle.progress import info
from modelcycle.serve import replies, schemas
from modelcycle.serve.auth import require_key
from modelcycle.serve.batching import DynamicBatcher, QueueFull
from modelcycle.serve.limits import BodyLimits
from modelcycle.serve.methods import JsonErrorsProtocol
from modelcycle.serve.metrics import MetricsMiddleware, ServeMetrics
from modelcycle.serve.models import ServedModel
from modelcycle.serve.pool import DecodePool
from modelcycle.serve.predict import PredictEndpoint, b64decode, check_count, openapi_operation, softmax

STATIC = Path(__file__).parent / "static"
ERRORS_TEXT = {
    400: "An image or tensor could not be used (the message says which and why).",
    401: "Missing or wrong API key.",
    404: "No model of that name or version.",
    408: "The request body arrived too slowly.",
    413: "Body, image count or image size over a limit.",
    415: "Body is neither JSON nor multipart/form-data.",
    422: "The body does not match the schema.",
    503: "The model's queue is full; retry after the Retry-After header's seconds.",
    504: "The model did not answer within serve.request_timeout_s.",
}
ERRORS = {code: {"model": schemas.ErrorResponse, "description": text} for code, text in ERRORS_TEXT.items()}


class ServeApp(FastAPI):
    """FastAPI with ``fast_routes``: paths answered by a plain ASGI app (wrapped in the same body
    limits and metrics), skipping FastAPI's per-request machinery; their OpenAPI operations are
    added to the spec by hand. HEAD is answered as GET without the body (FastAPI's routes take
    only the methods they declare), methods the HTTP parser does not know get a JSON 405
    (:mod:`modelcycle.serve.methods`, run by ``serve`` as uvicorn's protocol)."""

    fast_routes: dict[str, tuple[object, dict, dict]]  # path: (ASGI app, POST operation, schemas)
    http_protocol = JsonErrorsProtocol

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            if scope["method"] == "HEAD":  # uvicorn sends no body for HEAD, as it still sees HEAD
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


class ServeState:
    """The models, their batchers and the decode pool of one app."""

    def __init__(self, models: list[ServedModel], cfg: ServeSection, metrics: ServeMetrics):
        self.cfg = cfg
        self.models = {m.name: m for m in models}
        self.default = models[0].name
        self.metrics = metrics
        self.monitor = None  # a modelcycle.monitor.live.Monitor with `serve --monitor DIR`
        self.decode_pool = DecodePool(cfg.preprocess_threads or os.cpu_count() or 1)
        self.batchers = {
            m.name: DynamicBatcher(
                m.predictor,
                cfg.max_batch_size,
                cfg.max_batch_delay_ms,
                cfg.max_queue,
                on_batch=metrics.batch_size.labels(m.name).observe,
            )
            for m in models
        }
        for name, batcher in self.batchers.items():
            metrics.queue_depth.labels(name).set_function(lambda b=batcher: b.depth)

    def model(self, name: str | None, version: str | None = None) -> ServedModel:
        served = self.models.get(name or self.default)
        if served is None:
            raise HTTPException(404, f"no model named {name!r}; this server has {', '.join(self.models)}")
        if version is not None and version != served.version:
            raise HTTPException(404, f"model {served.name!r} has version {served.version}, not {version!r}")
        return served

    @asynccontextmanager
    async def deadline(self) -> AsyncIterator[float]:
        """``serve.request_timeout_s`` over all the work of a request once its body is in, decoding
        and the model together: 504 when it runs out. Yields the deadline on ``time.monotonic``."""
        timeout = self.cfg.request_timeout_s
        try:
            async with asyncio.timeout(timeout):
                yield time.monotonic() + timeout
        except TimeoutError:
            raise HTTPException(504, f"no answer within {timeout:g} s (serve.request_timeout_s); retry later") from None

    async def decode(
        self, served: ServedModel, blobs: list[bytes], deadline: float
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode and preprocess in the pool, all images of a request in parallel. With a monitor,
        also each file's ``size`` feature (from the header the decoder reads anyway); else None.
        A job still queued at ``deadline`` is skipped: its request has had its 504."""
        sized = self.monitor is not None
        work = functools.partial(_in_time, deadline, served.preprocess_sized if sized else served.preprocess)
        results = await asyncio.gather(*[self.decode_pool.submit(work, blob) for blob in blobs], return_exceptions=True)
        for i, result in enumerate(results):
            if isinstance(result, DataError):
                raise HTTPException(400, f"image {i}: {result}")
            if isinstance(result, BaseException):
                raise result
        if sized:
            images, sizes = zip(*results, strict=True)
            return np.stack(images), np.asarray(sizes)
        return np.stack(results), None

    async def logits(self, served: ServedModel, images: np.ndarray, sizes: np.ndarray | None = None) -> np.ndarray:
        """The model's answer; callers bound the wait with :meth:`deadline`."""
        started = time.perf_counter()
        try:
            out = await self.batchers[served.name].submit(images)
        except QueueFull as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
        self.metrics.images.labels(served.name).inc(len(images))
        if self.monitor is not None:  # hands the arrays to its writer thread; nothing else on this path
            self.monitor.observe(served, images, out, time.perf_counter() - started, sizes)
        return out


def _in_time(deadline: float, work, blob: bytes):
    """``work(blob)`` in a pool thread, unless the request's deadline has passed while it queued."""
    if time.monotonic() > deadline:
        raise TimeoutError  # its request has been answered (504); nobody waits for this
    return work(blob)


def create_app(models: list[ServedModel], cfg: ServeSection, api_key: str | None = None, monitor=None) -> FastAPI:
    metrics = ServeMetrics()
    state = ServeState(models, cfg, metrics)
    if monitor is not None:  # drift gauges on /metrics next to latency
        state.monitor = monitor
        monitor.attach(metrics.registry)
    auth = [Depends(require_key(api_key))] if api_key else []  # no per-request dependency when open
    if cfg.metrics_auth and not api_key:
        raise ConfigError("serve.metrics_auth=true puts /metrics behind the API key: give one with --api-key-env NAME")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        for batcher in state.batchers.values():
            batcher.start()
        yield
        # uvicorn has let in-flight requests finish by now (graceful shutdown)
        for batcher in state.batchers.values():
            await batcher.stop()
        state.decode_pool.shutdown()
        if state.monitor is not None:
            state.monitor.close()  # commits the rows still waiting
        info("server stopped: in-flight requests answered")

    app = ServeApp(
        title="modelcycle serve",
        version=package_version("modelcycle"),
        description="Image classification: `/v1/predict` (JSON or multipart) and the Open Inference Protocol "
        "(KServe v2) under `/v2`. Metrics at `/metrics`, a playground at `/`. Served: " + ", ".join(state.models),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.serve = state
    limits = {"max_bytes": int(cfg.max_body_mb * 1e6), "timeout_s": cfg.body_timeout_s}
    app.add_middleware(BodyLimits, **limits)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    predict = MetricsMiddleware(BodyLimits(PredictEndpoint(state, api_key), **limits), metrics)
    app.fast_routes = {"/v1/predict": (predict, *openapi_operation(ERRORS_TEXT, api_key is not None))}
    _error_handlers(app)
    docs_routes(app)

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

    @app.get("/v1/models", tags=["v1"], response_model=schemas.ModelList, responses=ERRORS, dependencies=auth)
    async def list_models() -> dict:
        return {
            "models": [
                {
                    "name": m.name,
                    "version": m.version,
                    "backend": m.predictor.backend,
                    "classes": m.classes,
                    "input_shape": m.input_shape,
                }
                for m in state.models.values()
            ]
        }

    @app.get("/v2", tags=["v2"], response_model=schemas.ServerMetadata)
    async def server_metadata() -> dict:
        return {"name": "modelcycle", "version": app.version, "extensions": []}

    @app.get("/v2/health/live", tags=["v2"], response_model=schemas.Live)
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"], response_model=schemas.Ready)
    async def ready() -> JSONResponse:
        ok = all(b.running for b in state.batchers.values())
        # the Open Inference Protocol: 200 means ready, a 4xx not ready (probes read only the code)
        return JSONResponse({"ready": ok}, 200 if ok else 400)

    def latest(name: str) -> ServedModel:
        return state.model(name)

    def versioned(name: str, version: str) -> ServedModel:
        return state.model(name, version)

    _v2_model_routes(app, state, "/v2/models/{name}", auth, latest)
    _v2_model_routes(app, state, "/v2/models/{name}/versions/{version}", auth, versioned)
    return app


def _v2_model_routes(app: FastAPI, state: ServeState, prefix: str, auth: list, pick) -> None:
    """The per-model endpoints, under /v2/models/NAME and /v2/models/NAME/versions/VERSION."""

    @app.get(prefix, tags=["v2"], response_model=schemas.ModelMetadata, responses=ERRORS, dependencies=auth)
    async def model_metadata(served: ServedModel = Depends(pick)) -> dict:
        return served.metadata()

    @app.get(prefix + "/ready", tags=["v2"], response_model=schemas.ModelReady, responses=ERRORS, dependencies=auth)
    async def model_ready(served: ServedModel = Depends(pick)) -> dict:
        return {"name": served.name, "ready": True}

    @app.post(prefix + "/infer", tags=["v2"], response_model=schemas.InferResponse, responses=ERRORS, dependencies=auth)
    async def infer(body: schemas.InferRequest, served: ServedModel = Depends(pick)) -> JSONResponse:
        async with state.deadline() as deadline:
            images, sizes = await _v2_images(state, served, body.inputs[0], deadline)
            logits = await state.logits(served, images, sizes)
        wanted = [o.name for o in body.outputs] if body.outputs else ["probabilities", "logits", "label"]
        values = {
            "probabilities": lambda: softmax(logits),
            "logits": lambda: logits,
            "label": lambda: np.asarray([served.classes[i] for i in logits.argmax(1)]),
        }
        outputs = []
        for out in dict.fromkeys(wanted):
            array = values[out]()
            datatype = "BYTES" if out == "label" else "FP32"
            data = array.ravel().tolist()
            outputs.append({"name": out, "shape": list(array.shape), "datatype": datatype, "data": data})
        return JSONResponse(
            {"model_name": served.name, "model_version": served.version, "id": body.id, "outputs": outputs}
        )


async def _v2_images(
    state: ServeState, served: ServedModel, tensor: schemas.InferTensor, deadline: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """The request's images, and their sizes as sent when they came as files and a monitor wants them."""
    count = tensor.shape[0]
    if count < 1 or any(d < 1 for d in tensor.shape):
        raise HTTPException(400, f"input {tensor.name!r}: shape {tensor.shape} has an empty or negative dimension")
    check_count(count, state.cfg)
    if tensor.name == "image_bytes" and tensor.datatype == "BYTES":
        if tensor.shape != [count] or len(tensor.data) != count or not all(isinstance(v, str) for v in tensor.data):
            raise HTTPException(400, f"input 'image_bytes': send shape [N] and N base64 strings, not {tensor.shape}")
        blobs = [b64decode(text, f"image_bytes[{i}]") for i, text in enumerate(tensor.data)]
        return await state.decode(served, blobs, deadline)
    if tensor.name == "input" and tensor.datatype == "FP32":
        expected = [count, *served.input_shape]
        if tensor.shape != expected:
            raise HTTPException(400, f"input 'input': shape {tensor.shape}, expected {expected} (N, C, H, W)")
        try:
            array = np.asarray(tensor.data, dtype=np.float32).ravel()
        except (ValueError, TypeError):
            raise HTTPException(400, "input 'input': data must be numbers (flat or nested lists)") from None
        if array.size != np.prod(expected):
            raise HTTPException(400, f"input 'input': {array.size} values for shape {expected} ({np.prod(expected)})")
        if not np.isfinite(array).all():
            raise HTTPException(400, "input 'input': NaN or infinite values")
        return array.reshape(expected), None  # a tensor: the size it had as a file is unknown
    shape = served.input_shape
    raise HTTPException(
        400,
        f"input {tensor.name!r} ({tensor.datatype}): send 'input' as FP32 shape [N, {', '.join(map(str, shape))}]"
        " (preprocessed) or 'image_bytes' as BYTES base64 image files",
    )


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return replies.http_error(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return replies.invalid(exc)

    @app.exception_handler(Exception)
    async def bug(_request: Request, exc: Exception) -> JSONResponse:
        return replies.bug(exc)


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
