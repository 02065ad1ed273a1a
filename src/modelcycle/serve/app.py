"""The HTTP API: our own JSON/multipart endpoint, the Open Inference Protocol (KServe v2) so
standard clients work unchanged, Prometheus metrics, a playground page and offline /docs.

Every error a client can cause is a 4xx with ``{"error": "..."}`` saying what to fix; a 5xx
means a bug or an overload (503 + Retry-After), never bad input.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import time
from contextlib import asynccontextmanager
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelcycle.config import ServeSection
from modelcycle.errors import DataError
from modelcycle.progress import info
from modelcycle.serve import schemas
from modelcycle.serve.auth import require_key
from modelcycle.serve.batching import DynamicBatcher, QueueFull
from modelcycle.serve.limits import BodyLimits
from modelcycle.serve.metrics import MetricsMiddleware, ServeMetrics
from modelcycle.serve.models import ServedModel
from modelcycle.serve.pool import DecodePool

log = logging.getLogger("modelcycle.serve")
STATIC = Path(__file__).parent / "static"
ERRORS = {
    code: {"model": schemas.ErrorResponse, "description": text}
    for code, text in {
        400: "An image or tensor could not be used (the message says which and why).",
        401: "Missing or wrong API key.",
        404: "No model of that name or version.",
        408: "The request body arrived too slowly.",
        413: "Body, image count or image size over a limit.",
        415: "Body is neither JSON nor multipart/form-data.",
        422: "The body does not match the schema.",
        503: "The model's queue is full; retry after the Retry-After header's seconds.",
        504: "The model did not answer within serve.request_timeout_s.",
    }.items()
}
PREDICT_BODY = {
    "parameters": [
        {
            "name": "model",
            "in": "query",
            "required": False,
            "description": "Model name (default: the first one served).",
            "schema": {"type": "string"},
        },
        {
            "name": "topk",
            "in": "query",
            "required": False,
            "description": "Classes per image (default serve.topk).",
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
        },
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": schemas.PredictRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
        },
    },
}


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

    async def decode(self, served: ServedModel, blobs: list[bytes]) -> np.ndarray:
        """Decode and preprocess in the pool, all images of a request in parallel."""
        jobs = [self.decode_pool.submit(served.preprocess, blob) for blob in blobs]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for i, result in enumerate(results):
            if isinstance(result, DataError):
                raise HTTPException(400, f"image {i}: {result}")
            if isinstance(result, BaseException):
                raise result
        return np.stack(results)

    async def logits(self, served: ServedModel, images: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        try:
            out = await asyncio.wait_for(self.batchers[served.name].submit(images), self.cfg.request_timeout_s)
        except QueueFull as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
        except TimeoutError:
            raise HTTPException(504, f"no answer within {self.cfg.request_timeout_s:g} s; retry later") from None
        self.metrics.images.labels(served.name).inc(len(images))
        if self.monitor is not None:  # hands the arrays to its writer thread; nothing else on this path
            self.monitor.observe(served, images, out, time.perf_counter() - started)
        return out


def check_count(count: int, cfg: ServeSection) -> None:
    """Before any decoding: a request over the limit costs nothing."""
    if count > cfg.max_images:
        raise HTTPException(413, f"{count} images in one request; the limit is {cfg.max_images}")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def b64decode(text: str, what: str) -> bytes:
    if text.startswith("data:"):  # what FileReader.readAsDataURL gives a browser
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"{what} is not valid base64") from None


def create_app(models: list[ServedModel], cfg: ServeSection, api_key: str | None = None, monitor=None) -> FastAPI:
    metrics = ServeMetrics()
    state = ServeState(models, cfg, metrics)
    if monitor is not None:  # drift gauges on /metrics next to latency
        state.monitor = monitor
        monitor.attach(metrics.registry)
    auth = [Depends(require_key(api_key))] if api_key else []  # no per-request dependency when open

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

    app = FastAPI(
        title="modelcycle serve",
        version=package_version("modelcycle"),
        description="Image classification: `/v1/predict` (JSON or multipart) and the Open Inference Protocol "
        "(KServe v2) under `/v2`. Metrics at `/metrics`, a playground at `/`. Served: " + ", ".join(state.models),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.serve = state
    app.add_middleware(BodyLimits, max_bytes=int(cfg.max_body_mb * 1e6), timeout_s=cfg.body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _error_handlers(app)
    _docs_routes(app)

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
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

    @app.post(
        "/v1/predict",
        tags=["v1"],
        summary="Classify images sent as JSON base64 or as multipart files",
        response_model=schemas.PredictResponse,
        responses=ERRORS,
        openapi_extra=PREDICT_BODY,
        dependencies=auth,
    )
    async def predict(request: Request) -> JSONResponse:
        # query parameters read by hand (declared in PREDICT_BODY for the docs): FastAPI's
        # per-request parameter solving cost a fifth of the event loop's time per request
        model, topk = _query(request)
        served = state.model(model)
        blobs, body_topk = await _read_images(request, cfg)
        images = await state.decode(served, blobs)
        probs = softmax(await state.logits(served, images))
        k = min(topk or body_topk or cfg.topk, len(served.classes))
        # a Response skips FastAPI re-validating our own output against response_model (which
        # still documents it): a sizeable share of the event loop's time per request
        return JSONResponse(
            {"model": served.name, "version": served.version, "predictions": _ranked(probs, served.classes, k)}
        )

    @app.get("/v2", tags=["v2"], response_model=schemas.ServerMetadata)
    async def server_metadata() -> dict:
        return {"name": "modelcycle", "version": app.version, "extensions": []}

    @app.get("/v2/health/live", tags=["v2"], response_model=schemas.Live)
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"], response_model=schemas.Ready)
    async def ready() -> JSONResponse:
        ok = all(b.task is not None and not b.task.done() for b in state.batchers.values())
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
        images = await _v2_images(state, served, body.inputs[0])
        logits = await state.logits(served, images)
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


async def _v2_images(state: ServeState, served: ServedModel, tensor: schemas.InferTensor) -> np.ndarray:
    count = tensor.shape[0]
    if count < 1 or any(d < 1 for d in tensor.shape):
        raise HTTPException(400, f"input {tensor.name!r}: shape {tensor.shape} has an empty or negative dimension")
    check_count(count, state.cfg)
    if tensor.name == "image_bytes" and tensor.datatype == "BYTES":
        if tensor.shape != [count] or len(tensor.data) != count or not all(isinstance(v, str) for v in tensor.data):
            raise HTTPException(400, f"input 'image_bytes': send shape [N] and N base64 strings, not {tensor.shape}")
        blobs = [b64decode(text, f"image_bytes[{i}]") for i, text in enumerate(tensor.data)]
        return await state.decode(served, blobs)
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
        return array.reshape(expected)
    shape = served.input_shape
    raise HTTPException(
        400,
        f"input {tensor.name!r} ({tensor.datatype}): send 'input' as FP32 shape [N, {', '.join(map(str, shape))}]"
        " (preprocessed) or 'image_bytes' as BYTES base64 image files",
    )


def _query(request: Request) -> tuple[str | None, int | None]:
    params = request.query_params
    topk = params.get("topk")
    if topk is not None:
        if not topk.isdigit() or not 1 <= int(topk) <= 1000:
            raise HTTPException(422, f"invalid request: topk: must be an integer from 1 to 1000 (got {topk!r})")
        topk = int(topk)
    return params.get("model"), topk


async def _read_images(request: Request, cfg: ServeSection) -> tuple[list[bytes], int | None]:
    """The image files of a /v1/predict body, JSON or multipart."""
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form(max_files=cfg.max_images, max_fields=cfg.max_images)
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise HTTPException(400, "the multipart body has no file; send images as 'files' file fields")
        check_count(len(files), cfg)
        return [await f.read() for f in files], None
    if kind != "application/json":
        raise HTTPException(415, f"content type {kind!r}: send application/json or multipart/form-data")
    raw = await request.body()
    try:
        body = schemas.PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    check_count(len(body.images), cfg)
    return [b64decode(text, f"images[{i}]") for i, text in enumerate(body.images)], body.topk


def _ranked(probs: np.ndarray, classes: list[str], k: int) -> list[dict]:
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]
        top = [{"label": classes[i], "index": int(i), "probability": float(row[i])} for i in order]
        out.append({**top[0], "topk": top})
    return out


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint; see /docs for the API"
        elif exc.status_code == 405:
            message = "method not allowed on this endpoint; see /docs for the API"
        return JSONResponse({"error": str(message)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors()[:10]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"error": "invalid request: " + "; ".join(problems)}, 422)

    @app.exception_handler(Exception)
    async def bug(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")  # a 500 is always our bug: keep the traceback in the log
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server log"}, 500)


def _docs_routes(app: FastAPI) -> None:
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
