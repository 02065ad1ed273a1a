"""The JSON error replies, one place for FastAPI's exception handlers and for the routes that
run outside FastAPI (``/v1/predict``): every client mistake is a 4xx ``{"error": "..."}``."""

from __future__ import annotations

import logging

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from modelcycle.serve import schemas

log = logging.getLogger("modelcycle.serve")
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


def http_error(exc: HTTPException) -> JSONResponse:
    message = exc.detail
    if exc.status_code == 404 and message == "Not Found":
        message = "no such endpoint; see /docs for the API"
    elif exc.status_code == 405:
        message = "method not allowed on this endpoint; see /docs for the API"
    return JSONResponse({"error": str(message)}, exc.status_code, headers=exc.headers)


def invalid(exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors()[:10]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    return JSONResponse({"error": "invalid request: " + "; ".join(problems)}, 422)


def bug(exc: Exception) -> JSONResponse:
    log.exception("unhandled error")  # a 500 is always our bug: keep the traceback in the log
    return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server log"}, 500)
