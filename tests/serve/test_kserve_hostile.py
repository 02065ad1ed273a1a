"""Hostile KServe v2 infer requests, sent as raw bytes: every length, size and shape in them is
the client's word, checked against the body before anything is sliced, decoded or allocated.
Each lie gets a 4xx whose message names the number that disagrees, and the server keeps serving."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import httpx
import numpy as np
import pytest

PATH = "/v2/models/shapes/infer"
PIXELS = 3 * 16 * 16  # the ``trained`` package's input: (3, 16, 16)
LENGTH = "Inference-Header-Content-Length"


def send(server, header: dict | bytes, binary: bytes = b"", length: str | None = None, **headers) -> httpx.Response:
    """``header`` (JSON) then ``binary``; the header length is the true one unless ``length`` says otherwise."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    if binary and length is None:
        length = str(len(text))
    if length is not None:
        headers[LENGTH] = length
    return httpx.post(server.url + PATH, content=text + binary, headers=headers, timeout=30)


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]


def tensor(name: str, shape: list[int], datatype: str, size: int | None = None, **extra) -> dict:
    """One input; ``size``: its binary_data_size."""
    parameters = {} if size is None else {"binary_data_size": size}
    return {"name": name, "shape": shape, "datatype": datatype, "parameters": parameters, **extra}


def pixels(count: int = 1) -> bytes:
    return np.zeros((count, 3, 16, 16), "<f4").tobytes()


def packed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


@pytest.fixture(autouse=True, scope="module")
def still_serving(server, images):
    """After all of them, a good binary request is answered as ever."""
    yield
    good = {"inputs": [tensor("input", [1, 3, 16, 16], "FP32", 4 * PIXELS)]}
    assert send(server, good, pixels()).status_code == 200
    png = images[0].read_bytes()
    files = {"inputs": [tensor("image_bytes", [1], "BYTES", 4 + len(png))]}
    assert send(server, files, packed(png)).status_code == 200


def test_the_header_length_must_be_a_count_within_the_body(server):
    header = {"inputs": [tensor("input", [1, 3, 16, 16], "FP32", 4 * PIXELS)]}
    body = pixels()
    size = len(json.dumps(header))
    assert "body holds" in error_of(send(server, header, body, length=str(size + len(body) + 1)), 400)
    assert "body holds" in error_of(send(server, header, body, length=str(10**18)), 400)
    assert "not a byte count" in error_of(send(server, header, body, length="-5"), 400)
    assert "not a byte count" in error_of(send(server, header, body, length="9" * 400), 400)
    assert "not a byte count" in error_of(send(server, header, body, length="0x10"), 400)
    assert "body holds" in error_of(send(server, header, body, length="0"), 400)
    # a length that cuts the JSON short: the header is not JSON, a schema error
    assert "json" in error_of(send(server, header, body, length=str(size - 3)), 422).lower()


def test_binary_data_sizes_must_add_up_to_the_body(server):
    def one(size, body: bytes = pixels(), **extra) -> httpx.Response:
        return send(server, {"inputs": [tensor("input", [1, 3, 16, 16], "FP32", size, **extra)]}, body)

    assert "past" not in (message := error_of(one(4 * PIXELS + 1), 400)) and "binary_data_size" in message
    assert "belong to no input" in error_of(one(4 * PIXELS - 4), 400)
    assert "byte count" in error_of(one(-1), 400)
    assert "byte count" in error_of(one("3072"), 400)
    assert "byte count" in error_of(one(True), 400)
    assert "binary_data_size" in error_of(one(2**80), 400)
    assert "both" in error_of(one(4 * PIXELS, data=[0.0] * PIXELS), 400)
    # a binary size but no header length: the whole body is read as the JSON header
    header = {"inputs": [tensor("input", [1, 3, 16, 16], "FP32", 4 * PIXELS)]}
    assert "binary_data_size" in error_of(send(server, header), 400)
    assert "neither" in error_of(send(server, {"inputs": [tensor("input", [1, 3, 16, 16], "FP32")]}), 400)
    # bytes after the JSON that no input claims
    json_only = {"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * PIXELS}]}
    assert "belong to no input" in error_of(send(server, json_only, b"\0" * 8), 400)


def test_shapes_are_checked_before_any_data_is_read(server):
    def shaped(shape: list[int], body: bytes = b"\0" * 4) -> httpx.Response:
        return send(server, {"inputs": [tensor("input", shape, "FP32", len(body))]}, body)

    # a product past 2**64: refused by comparing the shape with the model's, nothing multiplied first
    assert "expected [1, 3, 16, 16]" in error_of(shaped([1, 2**62, 2**62, 3]), 400)
    assert "expected [1, 3, 16, 16]" in error_of(shaped([1, 3, 16, 16, 2**40]), 400)
    assert "negative" in error_of(shaped([1, -3, 16, 16]), 400)
    assert "negative" in error_of(shaped([1, 3, 0, 16]), 400)
    # a batch over serve.max_images (8 here): a limit, 413 as for /v1/predict, before the data
    assert "limit is 8" in error_of(shaped([2**70, 3, 16, 16]), 413)
    assert "limit is 8" in error_of(
        send(server, {"inputs": [tensor("image_bytes", [10**9], "BYTES", 4)]}, b"\0" * 4), 413
    )
    # the right shape with the wrong number of bytes
    assert "takes 3,072" in error_of(shaped([1, 3, 16, 16], pixels()[:-1]), 400)
    assert "takes 6,144" in error_of(shaped([2, 3, 16, 16], pixels()), 400)


def test_datatypes_must_be_what_each_input_takes(server):
    assert "is FP32" in error_of(
        send(server, {"inputs": [tensor("input", [1, 3, 16, 16], "BYTES", 10)]}, packed(b"ab", b"")), 400
    )
    assert "is FP32" in error_of(
        send(server, {"inputs": [tensor("input", [1, 3, 16, 16], "FP64", 8 * PIXELS)]}, b"\0" * 8 * PIXELS), 400
    )
    assert "is BYTES" in error_of(send(server, {"inputs": [tensor("image_bytes", [1], "FP32", 4)]}, b"\0" * 4), 400)
    assert error_of(send(server, {"inputs": [tensor("input", [1, 3, 16, 16], "FP99", 4)]}, b"\0" * 4), 422)
    nan = np.full((1, 3, 16, 16), np.nan, "<f4").tobytes()
    assert "NaN" in error_of(send(server, {"inputs": [tensor("input", [1, 3, 16, 16], "FP32", len(nan))]}, nan), 400)


def test_bytes_elements_may_not_run_past_their_data(server):
    def files(count: int, body: bytes) -> httpx.Response:
        return send(server, {"inputs": [tensor("image_bytes", [count], "BYTES", len(body))]}, body)

    assert "past the end" in error_of(files(1, struct.pack("<I", 2**32 - 1) + b"tiny"), 400)
    assert "past the end" in error_of(files(1, struct.pack("<I", 5) + b"four"), 400)
    assert "no 4-byte length" in error_of(files(2, packed(b"abc") + b"\x01\x00"), 400)
    assert "no 4-byte length" in error_of(files(3, packed(b"abc")), 400)
    assert "left after the 1 elements" in error_of(files(1, packed(b"abc", b"def")), 400)
    # well-formed elements that are not images: the decoder's own 400
    assert "image 0" in error_of(files(1, packed(b"not an image")), 400)
    # JSON elements must be base64 strings, one per element of the shape
    assert "takes 2 strings" in error_of(
        send(server, {"inputs": [{**tensor("image_bytes", [2], "BYTES"), "data": ["AAAA"]}]}), 400
    )
    assert "base64" in error_of(
        send(server, {"inputs": [{**tensor("image_bytes", [1], "BYTES"), "data": ["%%%"]}]}), 400
    )


def test_compressed_bodies_are_inflated_within_the_body_limit(server):
    good = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * PIXELS}]}
    )
    assert send(server, gzip.compress(good.encode()), **{"Content-Encoding": "gzip"}).status_code == 200
    # 64 MB of zeros in 64 kB: over serve.max_body_mb (16 MB) once inflated, refused without inflating it all
    bomb = gzip.compress(b"\0" * 64_000_000, compresslevel=9)
    assert "inflates to over the limit" in error_of(send(server, bomb, **{"Content-Encoding": "gzip"}), 413)
    assert "not valid gzip" in error_of(send(server, b"plain text", **{"Content-Encoding": "gzip"}), 400)
    assert "truncated" in error_of(
        send(server, zlib.compress(good.encode())[:-10], **{"Content-Encoding": "deflate"}), 400
    )
    assert "follow the end" in error_of(
        send(server, gzip.compress(good.encode()) + b"junk", **{"Content-Encoding": "gzip"}), 400
    )
    assert "gzip, deflate" in error_of(send(server, good.encode(), **{"Content-Encoding": "br"}), 415)


def test_parameters_are_honoured_or_refused_by_name(server):
    body = {"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * PIXELS}]}

    def with_(**changes) -> httpx.Response:
        return send(server, {**body, **changes})

    assert "unknown parameter 'color'" in error_of(with_(parameters={"color": "red"}), 400)
    assert "shared memory" in error_of(with_(parameters={"shared_memory_region": "r"}), 400)
    assert "true or false" in error_of(with_(parameters={"binary_data_output": "yes"}), 400)
    assert "positive count" in error_of(with_(parameters={"timeout": -1}), 400)
    assert "stateless" in error_of(with_(parameters={"sequence_id": 3}), 400)
    one = {**body["inputs"][0], "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4}}
    assert "shared memory" in error_of(with_(inputs=[one]), 400)
    other = {**body["inputs"][0], "parameters": {"binary_data": True}}
    assert "unknown parameter 'binary_data'" in error_of(with_(inputs=[other]), 400)
    assert "twice" in error_of(with_(outputs=[{"name": "label"}, {"name": "label"}]), 400)
    assert "ranks" in error_of(with_(outputs=[{"name": "label", "parameters": {"classification": 2}}]), 400)
    assert "number of classes" in error_of(
        with_(outputs=[{"name": "logits", "parameters": {"classification": "2"}}]), 400
    )
    assert "true or false" in error_of(with_(outputs=[{"name": "logits", "parameters": {"binary_data": 1}}]), 400)
    assert "unknown parameter" in error_of(with_(outputs=[{"name": "logits", "parameters": {"top": 1}}]), 400)
    assert error_of(with_(outputs=[{"name": "embedding"}]), 422)
