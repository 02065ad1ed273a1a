"""Bad, greedy and unauthorised requests: each gets a 4xx (or 503 to retry) with a JSON error
that says what to fix, and the server keeps answering good requests."""

from __future__ import annotations

import io
import json
import socket
import time
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from PIL import Image

from helpers import b64_file
from modelcycle.serve.process import ServerProcess

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def strict(trained):
    settings = [
        "serve.max_images=4",
        "serve.max_body_mb=0.2",
        "serve.max_pixels=100000",
        "serve.body_timeout_s=1",
        "--api-key-env",
        "TEST_SERVE_KEY",
    ]
    with ServerProcess([trained], *settings, env={"TEST_SERVE_KEY": KEY}) as server:
        yield server


def post(server, body=None, key: str | None = KEY, path: str = "/v1/predict", **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + path, json=body, headers=headers, timeout=30, **kwargs)


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def test_api_key_is_required_when_configured(strict, images):
    body = {"images": [b64_file(images[0])]}
    assert "Bearer" in error_of(post(strict, body, key=None), 401)
    assert error_of(post(strict, body, key="wrong"), 401)
    assert post(strict, body).status_code == 200
    assert httpx.get(strict.url + "/v2/models/shapes").status_code == 401
    # probes, metrics and the playground stay open for the orchestrator and the browser
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/"):
        assert httpx.get(strict.url + path).status_code == 200, path


def test_size_and_count_limits(strict, images):
    assert "limit" in error_of(post(strict, {"images": [b64_file(images[0])] * 5}), 413)
    big = {"images": ["A" * 300_000]}
    assert "serve.max_body_mb" in error_of(post(strict, big), 413)
    # a chunked upload has no Content-Length: it is cut off by counting
    chunks = (b"x" * 65536 for _ in range(8))
    response = httpx.post(
        strict.url + "/v1/predict",
        content=chunks,
        headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    assert response.status_code == 413
    bomb = base64_of(png_bytes(2000, 2000))  # 4 M pixels, a few KB compressed
    message = error_of(post(strict, {"images": [bomb]}), 400)
    assert "2000x2000" in message and "100,000" in message


def base64_of(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"images": ["not base64!"]}, 400, "base64"),
        ({"images": [base64_of(b"GIF89a broken")]}, 400, "image 0"),
        ({"images": [base64_of(b"")]}, 400, "empty"),
        ({"images": []}, 422, "images"),
        ({"pictures": ["x"]}, 422, "pictures"),
        ({"images": "abc"}, 422, "images"),
        ({"images": ["AAAA"], "topk": 0}, 422, "topk"),
    ],
)
def test_malformed_bodies_are_4xx_with_a_reason(strict, body, status, fragment):
    assert fragment in error_of(post(strict, body), status)


def test_wrong_content_types_and_methods(strict):
    headers = {"Authorization": f"Bearer {KEY}"}
    response = httpx.post(
        strict.url + "/v1/predict", content=b"{", headers={**headers, "content-type": "application/json"}
    )
    assert error_of(response, 422)
    response = httpx.post(strict.url + "/v1/predict", content=b"abc", headers={**headers, "content-type": "text/plain"})
    assert "multipart" in error_of(response, 415)
    assert error_of(httpx.get(strict.url + "/v1/predict", headers=headers), 405)
    empty_form = httpx.post(strict.url + "/v1/predict", data={"a": "b"}, files={}, headers=headers)
    assert error_of(empty_form, 415 if "urlencoded" in empty_form.request.headers["content-type"] else 400)
    no_boundary = {**headers, "content-type": "multipart/form-data"}
    assert "boundary" in error_of(httpx.post(strict.url + "/v1/predict", content=b"x", headers=no_boundary), 400)


def test_bad_v2_tensors(strict):
    headers = {"Authorization": f"Bearer {KEY}"}
    url = strict.url + "/v2/models/shapes/infer"

    def infer(tensor: dict) -> httpx.Response:
        return httpx.post(url, json={"inputs": [tensor]}, headers=headers)

    assert "expected [1, 3, 16, 16]" in error_of(
        infer({"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.0] * 192}), 400
    )
    assert "values for shape" in error_of(
        infer({"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 7}), 400
    )
    nan = [0.0] * 767 + [float("nan")]
    response = httpx.post(
        url,
        content=json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": nan}]}),
        headers={**headers, "content-type": "application/json"},
    )
    assert response.status_code in (400, 422), response.text  # NaN is not even JSON: either way a 4xx
    assert "numbers" in error_of(
        infer({"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": ["a"] * 768}), 400
    )
    assert "image_bytes" in error_of(infer({"name": "other", "shape": [1], "datatype": "FP32", "data": [1]}), 400)
    assert error_of(infer({"name": "input", "shape": [0, 3, 16, 16], "datatype": "FP32", "data": []}), 400)
    # a type of the protocol the model does not take: refused by name; one the protocol lacks: by the schema
    assert "is FP32" in error_of(infer({"name": "input", "shape": [1], "datatype": "INT8", "data": [1]}), 400)
    assert error_of(infer({"name": "input", "shape": [1], "datatype": "FLOAT", "data": [1]}), 422)


def test_a_body_that_trickles_in_gets_408(strict):
    parsed = urlparse(strict.url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: 1000\r\n\r\n".encode()
            + b'{"images": ['
        )
        started = time.monotonic()
        reply = b""
        while b"}" not in reply and (chunk := sock.recv(4096)):  # headers and body may come apart
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 408"), reply
    assert "serve.body_timeout_s" in reply and time.monotonic() - started < 5


def test_a_full_queue_answers_503_with_retry_after(trained, images):
    with ServerProcess([trained], "serve.max_queue=2") as server:
        response = httpx.post(server.url + "/v1/predict", json={"images": [b64_file(images[0])] * 3})
        assert "queue" in error_of(response, 503)
        assert int(response.headers["Retry-After"]) >= 1
        assert httpx.post(server.url + "/v1/predict", json={"images": [b64_file(images[0])] * 2}).status_code == 200


def test_a_request_the_model_cannot_answer_in_time_gets_504(trained, images):
    with ServerProcess([trained], "serve.request_timeout_s=0.000001") as server:
        response = httpx.post(server.url + "/v1/predict", json={"images": [b64_file(images[0])]})
        assert "retry" in error_of(response, 504)
        assert httpx.get(server.url + "/v2/health/live").status_code == 200


def test_the_server_refuses_to_start_without_its_key(trained):
    from helpers import run_cli

    result = run_cli("serve", trained, "--port", "0", "--api-key-env", "SURELY_UNSET_VARIABLE_X")
    assert result.returncode == 2 and "SURELY_UNSET_VARIABLE_X" in result.stderr


def test_garbage_images_never_reach_the_model_as_noise(strict, images):
    # pixels that decode but are all one value: a real (if odd) image, classified normally
    response = post(strict, {"images": [base64_of(png_bytes(16, 16))]})
    assert response.status_code == 200
    assert np.isclose(sum(t["probability"] for t in response.json()["predictions"][0]["topk"]), 1.0, atol=1e-4)
