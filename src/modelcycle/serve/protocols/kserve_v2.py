"""The Open Inference Protocol (KServe v2) for the classifiers a server holds: server and model
metadata, readiness, and ``infer``. Images come as an FP32 ``input`` tensor (preprocessed) or as
BYTES ``image_bytes`` (base64 files); texts as a BYTES ``text`` input of UTF-8 strings."""

from __future__ import annotations

import numpy as np
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse

from modelcycle.serve import schemas
from modelcycle.serve.models import load_classifier as load  # the classifiers /v1/predict serves
from modelcycle.serve.predict import b64decode, check_count, softmax
from modelcycle.serve.replies import ERRORS
from modelcycle.serve.state import ServeState

NAME = "kserve_v2"
HOLDS = "models"  # the ServeState slot its models go in
__all__ = ["HOLDS", "NAME", "add_routes", "load"]


def add_routes(app: FastAPI, state: ServeState, auth: list) -> None:
    @app.get("/v2", tags=["v2"], response_model=schemas.ServerMetadata)
    async def server_metadata() -> dict:
        return {"name": "modelcycle", "version": app.version, "extensions": []}

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

    @app.post(prefix + "/infer", tags=["v2"], response_model=schemas.InferResponse, responses=ERRORS, dependencies=auth)
    async def infer(body: schemas.InferRequest, served=Depends(pick)) -> JSONResponse:
        async with state.deadline() as deadline:
            if getattr(served, "texts", False):
                inputs, sizes = await state.encode(served, _v2_texts(state, body.inputs[0]), deadline), None
            else:
                inputs, sizes = await _v2_images(state, served, body.inputs[0], deadline)
            logits = await state.logits(served, inputs, sizes)
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

    @app.get(prefix, tags=["v2"], response_model=schemas.ModelMetadata, responses=ERRORS, dependencies=auth)
    async def model_metadata(served=Depends(pick)) -> dict:
        return served.metadata()


async def _v2_images(
    state: ServeState, served, tensor: schemas.InferTensor, deadline: float
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


def _v2_texts(state: ServeState, tensor: schemas.InferTensor) -> list[str]:
    """A text classifier's input: ``text`` as BYTES, shape [N], N strings."""
    count = tensor.shape[0] if tensor.shape else 0
    if tensor.name != "text" or tensor.datatype != "BYTES":
        raise HTTPException(
            400, f"input {tensor.name!r} ({tensor.datatype}): send 'text' as BYTES, shape [N], N strings"
        )
    if count < 1 or tensor.shape != [count] or len(tensor.data) != count:
        raise HTTPException(400, f"input 'text': send shape [N] and N strings, not {tensor.shape}")
    if not all(isinstance(v, str) for v in tensor.data):
        raise HTTPException(400, "input 'text': every element must be a string")
    check_count(count, state.cfg, "texts")
    return list(tensor.data)
