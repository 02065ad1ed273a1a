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


class InferTensor(Strict):
    name: str = Field(..., description='"input": FP32 preprocessed (N, C, H, W); "image_bytes": BYTES base64 files.')
    shape: list[int] = Field(..., min_length=1, max_length=8)
    datatype: Literal["FP32", "BYTES"]
    parameters: dict[str, Any] | None = None
    data: list[Any] = Field(..., description="Row-major values, flat or nested.")


class RequestedOutput(Strict):
    name: Literal["probabilities", "logits", "label"]
    parameters: dict[str, Any] | None = None


class InferRequest(Strict):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferTensor] = Field(..., min_length=1, max_length=1)
    outputs: list[RequestedOutput] | None = None


class OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


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
