"""Request and response bodies. They are the OpenAPI spec that /docs shows and that clients
(and our schemathesis fuzz test) are generated from, so they say exactly what is accepted."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(Strict):
    images: list[str] = Field(
        ..., min_length=1, description="Image files (PNG, JPEG, WebP...) as base64 strings; a data: URL prefix is fine."
    )
    topk: int | None = Field(None, ge=1, le=1000, description="Classes to return per image (default serve.topk).")


class TextPredictRequest(Strict):
    texts: list[str] = Field(..., min_length=1, description="Texts to classify (a text classifier's model).")
    topk: int | None = Field(None, ge=1, le=1000, description="Classes to return per text (default serve.topk).")


class Ranked(BaseModel):
    label: str
    index: int
    probability: float


class Prediction(BaseModel):
    label: str
    index: int
    probability: float
    topk: list[Ranked]


class PredictResponse(BaseModel):
    model: str
    version: str
    predictions: list[Prediction]


class ErrorResponse(BaseModel):
    error: str = Field(..., description="What was wrong and what to do.")


class ModelInfo(BaseModel):
    name: str
    version: str
    backend: str
    classes: list[str]
    input_shape: list[int]


class ModelList(BaseModel):
    models: list[ModelInfo]


# ---------------------------------------------------------------- Open Inference Protocol (KServe v2)


# the protocol's tensor types: a type the models here do not take is refused by name, not by schema
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BF16",
    "BYTES",
]  # fmt: skip


class InferTensor(Strict):
    name: str = Field(
        ...,
        description='"input": FP32 preprocessed (N, C, H, W); "image_bytes": BYTES image files (base64 strings in '
        'JSON, raw bytes as binary data); "text": BYTES UTF-8 texts (a text classifier).',
    )
    shape: list[int] = Field(..., min_length=1, max_length=8)
    datatype: Datatype
    parameters: dict[str, Any] | None = Field(
        None, description='"binary_data_size": the bytes of this tensor in the binary part after the JSON header.'
    )
    data: list[Any] | None = Field(None, description="Row-major values, flat or nested; absent for binary data.")


class RequestedOutput(Strict):
    name: Literal["probabilities", "logits", "label"]
    parameters: dict[str, Any] | None = Field(
        None, description='"binary_data": true for binary data; "classification": k, the top k as "value:index:label".'
    )


class InferRequest(Strict):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description='"binary_data_output": every output as binary data; "timeout": microseconds to answer within.'
    )
    inputs: list[InferTensor] = Field(..., min_length=1, max_length=1)
    outputs: list[RequestedOutput] | None = None


class OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerMetadata(BaseModel):
    name: Literal["modelcycle"] = "modelcycle"
    version: str
    extensions: list[str] = []


class TensorSpec(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: dict[str, Any] = {}
