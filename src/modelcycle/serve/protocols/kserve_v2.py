"""The Open Inference Protocol (KServe v2) for the classifiers a server holds: server and model
metadata, readiness, and ``infer``, with the binary tensor data and classification extensions, so
that standard clients (Triton's ``tritonclient``) work unchanged.

Images come as an FP32 ``input`` tensor (preprocessed) or as BYTES ``image_bytes`` (image files:
base64 strings in JSON, raw bytes as binary data); texts as a BYTES ``text`` input of UTF-8
strings. Every parameter a client may send is either honoured or refused by name: none is
accepted and ignored.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from modelcycle.serve import schemas
from modelcycle.serve.models import load_classifier as load  # the classifiers /v1/predict serves
from modelcycle.serve.predict import b64decode, check_count
from modelcycle.serve.protocols import kserve_outputs
from modelcycle.serve.protocols.kserve_wire import (
    HEADER_LENGTH,
    binary_slices,
    check_parameters,
    decompress,
    flag,
    split_body,
    unpack_bytes,
)
from modelcycle.serve.replies import ERRORS
from modelcycle.serve.state import ServeState

NAME = "kserve_v2"
HOLDS = "models"  # the ServeState slot its models go in
EXTENSIONS = ["binary_tensor_data", "classification"]
__all__ = ["HOLDS", "NAME", "add_routes", "load"]

STATELESS = "the models here are stateless; send each request on its own"
REQUEST_PARAMETERS = {"binary_data_output": None, "timeout": None, "sequence_id": STATELESS,
                      "sequence_start": STATELESS, "sequence_end": STATELESS,
                      "priority": "requests are answered in the order they come; leave priority out"}  # fmt: skip
INPUT_PARAMETERS = {"binary_data_size": None}


def add_routes(app: FastAPI, state: ServeState, auth: list) -> None:
    @app.get("/v2", tags=["v2"], response_model=schemas.ServerMetadata)
    async def server_metadata() -> dict:
        return {"name": "modelcycle", "version": app.version, "extensions": EXTENSIONS}

    def latest(name: str):
        return state.model(name)

    def versioned(name: str, version: str):
        return state.model(name, version)

    # a name may hold slashes (a Hub id, Qwen/Qwen2.5-0.5B): the versioned routes are matched first,
    # and each prefix's /ready and /infer before its metadata, which takes whatever path is left
    _v2_model_routes(app, state, "/v2/models/{name:path}/versions/{version}", auth, versioned)
    _v2_model_routes(app, state, "/v2/models/{name:path}", auth, latest)


def _v2_model_routes(app: FastAPI, state: ServeState, prefix: str, auth: list, pick) -> None:
    """The per-model endpoints, under /v2/models/NAME and /v2/models/NAME/versions/VERSION."""

    @app.get(prefix + "/ready", tags=["v2"], response_model=schemas.ModelReady, responses=ERRORS, dependencies=auth)
    async def model_ready(served=Depends(pick)) -> dict:
        return {"name": served.name, "ready": True}

    @app.post(
        prefix + "/infer",
        tags=["v2"],
        response_model=schemas.InferResponse,
        responses=ERRORS,
        dependencies=auth,
        openapi_extra={"requestBody": INFER_BODY},
    )
    async def infer(request: Request, served=Depends(pick)) -> Response:
        return await _infer(state, served, request)

    @app.get(prefix, tags=["v2"], response_model=schemas.ModelMetadata, responses=ERRORS, dependencies=auth)
    async def model_metadata(served=Depends(pick)) -> dict:
        return served.metadata()


async def _infer(state: ServeState, served, request: Request) -> Response:
    """Read and check the whole request (sizes, shapes, parameters, outputs) before any work."""
    limit = int(state.cfg.max_body_mb * 1e6)
    body = decompress(await request.body(), request.headers.get("content-encoding"), limit)
    header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
    try:
        body = schemas.InferRequest.model_validate_json(header)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    parameters = body.parameters or {}
    check_parameters(parameters, REQUEST_PARAMETERS, "the request")
    binary_default = flag(parameters, "binary_data_output", "the request")
    wanted = kserve_outputs.requested(body.outputs, binary_default, len(served.classes))
    tensor = body.inputs[0]
    check_parameters(tensor.parameters or {}, INPUT_PARAMETERS, f"input {tensor.name!r}")
    (raw,) = binary_slices(body.inputs, binary)
    async with state.deadline() as deadline, _within(parameters.get("timeout")) as timeout_s:
        deadline = min(deadline, time.monotonic() + timeout_s)
        if getattr(served, "texts", False):
            inputs, sizes = await state.encode(served, _texts(state, tensor, raw), deadline), None
        else:
            inputs, sizes = await _images(state, served, tensor, raw, deadline)
        logits = await state.logits(served, inputs, sizes)
    return kserve_outputs.reply(served, body.id, logits, wanted)


@asynccontextmanager
async def _within(timeout_us):
    """The request's own ``timeout`` parameter (microseconds, as Triton reads it): a 504 when the
    answer takes longer; within ``serve.request_timeout_s`` either way. Yields it in seconds."""
    if timeout_us is None:
        yield float("inf")
        return
    if not isinstance(timeout_us, int | float) or isinstance(timeout_us, bool) or not 0 < timeout_us < 1e15:
        raise HTTPException(400, f"the request: parameter 'timeout' must be a positive count of µs, not {timeout_us!r}")
    try:
        async with asyncio.timeout(timeout_us / 1e6):
            yield timeout_us / 1e6
    except TimeoutError:
        raise HTTPException(504, f"no answer within the request's timeout of {timeout_us:g} µs") from None


def _batch(state: ServeState, tensor: schemas.InferTensor, what: str) -> int:
    """The number of items the shape says, within ``serve.max_images``, before any data is read."""
    if any(d < 1 for d in tensor.shape):
        raise HTTPException(400, f"input {tensor.name!r}: shape {tensor.shape} has an empty or negative dimension")
    check_count(tensor.shape[0], state.cfg, what)
    return tensor.shape[0]


def _datatype(tensor: schemas.InferTensor, expected: str, layout: str) -> None:
    if tensor.datatype != expected:
        raise HTTPException(400, f"input {tensor.name!r} is {expected}, {layout}; got datatype {tensor.datatype}")


def _elements(tensor: schemas.InferTensor, raw: bytes | None, count: int) -> list[str] | list[bytes]:
    """A BYTES tensor of shape [count]: strings from JSON, bytes from binary data."""
    if tensor.shape != [count]:
        raise HTTPException(400, f"input {tensor.name!r}: send shape [N] with N elements, not {tensor.shape}")
    if raw is not None:
        return unpack_bytes(raw, count, f"input {tensor.name!r}")
    if len(tensor.data) != count or not all(isinstance(v, str) for v in tensor.data):
        raise HTTPException(400, f"input {tensor.name!r}: shape [{count}] takes {count} strings in 'data'")
    return tensor.data


async def _images(
    state: ServeState, served, tensor: schemas.InferTensor, raw: bytes | None, deadline: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """The request's images, and their sizes as sent when they came as files and a monitor wants them."""
    shape = served.input_shape
    if tensor.name == "image_bytes":
        _datatype(tensor, "BYTES", "shape [N]: image files")
        items = _elements(tensor, raw, _batch(state, tensor, "images"))
        blobs = [b64decode(v, f"image_bytes[{i}]") if isinstance(v, str) else v for i, v in enumerate(items)]
        return await state.decode(served, blobs, deadline)
    if tensor.name == "input":
        _datatype(tensor, "FP32", f"shape [N, {', '.join(map(str, shape))}]: preprocessed images")
        expected = [_batch(state, tensor, "images"), *shape]
        if tensor.shape != expected:
            raise HTTPException(400, f"input 'input': shape {tensor.shape}, expected {expected} (N, C, H, W)")
        return _fp32(tensor, raw, expected), None  # a tensor: the size it had as a file is unknown
    raise HTTPException(
        400,
        f"input {tensor.name!r} ({tensor.datatype}): send 'input' as FP32 shape [N, {', '.join(map(str, shape))}]"
        " (preprocessed) or 'image_bytes' as BYTES image files",
    )


def _fp32(tensor: schemas.InferTensor, raw: bytes | None, expected: list[int]) -> np.ndarray:
    count = int(np.prod(expected))  # the shape equals the model's, so this is small
    if raw is not None:
        if len(raw) != 4 * count:
            raise HTTPException(
                400, f"input 'input': {len(raw):,} bytes of binary data; FP32 shape {expected} takes {4 * count:,}"
            )
        array = np.frombuffer(raw, "<f4").astype(np.float32)  # the protocol's byte order; a writable copy
    else:
        try:
            array = np.asarray(tensor.data, dtype=np.float32).ravel()
        except (ValueError, TypeError):
            raise HTTPException(400, "input 'input': data must be numbers (flat or nested lists)") from None
        if array.size != count:
            raise HTTPException(400, f"input 'input': {array.size} values for shape {expected} ({count})")
    if not np.isfinite(array).all():
        raise HTTPException(400, "input 'input': NaN or infinite values")
    return array.reshape(expected)


def _texts(state: ServeState, tensor: schemas.InferTensor, raw: bytes | None) -> list[str]:
    """A text classifier's input: ``text`` as BYTES, shape [N], N strings (UTF-8 as binary data)."""
    if tensor.name != "text":
        raise HTTPException(
            400, f"input {tensor.name!r} ({tensor.datatype}): send 'text' as BYTES, shape [N], N strings"
        )
    _datatype(tensor, "BYTES", "shape [N]: UTF-8 texts")
    items = _elements(tensor, raw, _batch(state, tensor, "texts"))
    if raw is None:
        return list(items)
    try:
        return [item.decode("utf-8") for item in items]
    except UnicodeDecodeError as exc:
        raise HTTPException(400, f"input 'text': an element is not UTF-8 ({exc.reason} at byte {exc.start})") from None


def _inline(schema: dict) -> dict:
    """A pydantic schema with its ``$defs`` written in place: the route's body is read by hand,
    so FastAPI does not put its parts into the spec's components."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rpartition("/")[2]])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    return walk(schema)


INFER_BODY = {
    "required": True,
    "description": f"JSON, or with the binary tensor data extension a JSON header of {HEADER_LENGTH} bytes "
    "followed by each input's binary_data_size bytes.",
    "content": {
        "application/json": {"schema": _inline(schemas.InferRequest.model_json_schema())},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
