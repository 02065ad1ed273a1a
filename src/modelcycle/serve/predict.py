"""``/v1/predict`` as a plain ASGI endpoint, and the image helpers it shares with ``/v2`` infer.

Under load the event loop's time per request is what limits a two-core server beside the model:
FastAPI's route (dependency solving, three middlewares of its own, exception wrapping, routing
over every path) cost about as much as decoding the image. This endpoint keeps what those layers
gave that clients see: the API key check, the body limits and metrics (the same middlewares as
every route, wrapped around it here), JSON 4xx errors through the app's own error replies, 405
on other methods, and its OpenAPI operation, written out in :func:`openapi_operation`.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

import numpy as np
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from modelcycle.config import ServeSection
from modelcycle.serve import replies, schemas
from modelcycle.serve.auth import check_header

if TYPE_CHECKING:
    from modelcycle.serve.state import ServeState

PATH = "/v1/predict"
QUERY = [
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
]
BODY = {
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
}


class PredictEndpoint:
    """The ASGI app behind ``POST /v1/predict``; ``path`` labels its metrics like a route's."""

    path = PATH

    def __init__(self, state: ServeState, api_key: str | None):
        self.state = state
        self.api_key = api_key

    async def __call__(self, scope, receive, send) -> None:
        scope["route"] = self  # MetricsMiddleware labels requests by the route's path
        request = Request(scope, receive)
        try:
            if scope["method"] != "POST":
                raise HTTPException(405, headers={"Allow": "POST"})
            if self.api_key:
                check_header(request.headers.get("authorization"), self.api_key)
            response = await self.answer(request)
        except HTTPException as exc:
            response = replies.http_error(exc)
        except RequestValidationError as exc:
            response = replies.invalid(exc)
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, answered as a JSON 500
            response = replies.bug(exc)
        finally:
            await request.close()  # a multipart body's spooled files
        await response(scope, receive, send)

    async def answer(self, request: Request) -> JSONResponse:
        state = self.state
        model, topk = _query(request)
        served = state.model(model)
        if getattr(served, "texts", False):
            texts, body_topk = await _read_texts(request, state.cfg)
            async with state.deadline() as deadline:
                probs = softmax(await state.logits(served, await state.encode(served, texts, deadline)))
        else:
            blobs, body_topk = await _read_images(request, state.cfg)
            async with state.deadline() as deadline:
                images, sizes = await state.decode(served, blobs, deadline)
                probs = softmax(await state.logits(served, images, sizes))
        k = min(topk or body_topk or state.cfg.topk, len(served.classes))
        # no re-validation against PredictResponse (it documents the reply): it is built right here
        return JSONResponse(
            {"model": served.name, "version": served.version, "predictions": _ranked(probs, served.classes, k)}
        )


def openapi_operation(errors: dict[int, str], secured: bool, texts: bool = False) -> tuple[dict, dict]:
    """The POST operation for the spec, and the component schemas it refers to; ``texts``: the
    server holds text classifiers too, whose models take ``{"texts": [...]}``."""
    ref = "#/components/schemas/{model}"
    reply = schemas.PredictResponse.model_json_schema(ref_template=ref, mode="serialization")
    components = {**reply.pop("$defs", {}), "PredictResponse": reply}
    components["ErrorResponse"] = schemas.ErrorResponse.model_json_schema(ref_template=ref)

    def json_of(name: str) -> dict:
        return {"application/json": {"schema": {"$ref": ref.format(model=name)}}}

    responses = {"200": {"description": "Successful Response", "content": json_of("PredictResponse")}}
    for code, text in errors.items():
        responses[str(code)] = {"description": text, "content": json_of("ErrorResponse")}
    operation = {
        "tags": ["v1"],
        "summary": "Classify images sent as JSON base64 or as multipart files",
        "operationId": "predict_v1_predict_post",
        "parameters": QUERY,
        "requestBody": _text_body() if texts else BODY,
        "responses": responses,
    }
    if secured:
        operation["security"] = [{"HTTPBearer": []}]
    return operation, components


def _text_body() -> dict:
    either = [BODY["content"]["application/json"]["schema"], schemas.TextPredictRequest.model_json_schema()]
    return {**BODY, "content": {**BODY["content"], "application/json": {"schema": {"anyOf": either}}}}


def check_count(count: int, cfg: ServeSection, what: str = "images") -> None:
    """Before any decoding: a request over the limit costs nothing."""
    if count > cfg.max_images:
        raise HTTPException(413, f"{count} {what} in one request; the limit is {cfg.max_images}")


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


def _query(request: Request) -> tuple[str | None, int | None]:
    params = request.query_params
    topk = params.get("topk")
    if topk is not None:
        # isdigit() alone takes '¹' and other digits int() refuses
        if not (topk.isascii() and topk.isdigit()) or not 1 <= int(topk) <= 1000:
            raise HTTPException(422, f"invalid request: topk: must be an integer from 1 to 1000 (got {topk!r})")
        topk = int(topk)
    return params.get("model"), topk


async def _read_images(request: Request, cfg: ServeSection) -> tuple[list[bytes], int | None]:
    """The image files of a /v1/predict body, JSON or multipart."""
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        try:
            form = await request.form(max_files=cfg.max_images, max_fields=cfg.max_images)
        except MultiPartException as exc:  # a FastAPI route gets this 400 from Starlette's app scope
            if exc.message.startswith(("Too many files", "Too many fields")):  # Starlette's words for its limits
                raise HTTPException(
                    413, f"more than {cfg.max_images} files or fields in one request; the limit is {cfg.max_images}"
                ) from None
            raise HTTPException(400, f"the multipart body cannot be read: {exc.message}") from None
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


async def _read_texts(request: Request, cfg: ServeSection) -> tuple[list[str], int | None]:
    """The texts of a /v1/predict body for a text classifier: JSON ``{"texts": [...], "topk": k}``."""
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HTTPException(415, f"content type {kind!r}: a text classifier takes application/json with 'texts'")
    try:
        body = schemas.TextPredictRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    check_count(len(body.texts), cfg, "texts")
    return body.texts, body.topk


def _ranked(probs: np.ndarray, classes: list[str], k: int) -> list[dict]:
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]
        top = [{"label": classes[i], "index": int(i), "probability": float(row[i])} for i in order]
        out.append({**top[0], "topk": top})
    return out
