"""KServe v2 with a third-party client: Triton's ``tritonclient`` (HTTP, sync and asyncio) against
a real `modelcycle serve` process holding an image and a text classifier. Its answers must equal
our own /v1/predict's for the same inputs, whether tensors travel as JSON or as binary data."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

import modelcycle
from helpers import b64_file, one_torch_thread
from modelcycle.evaluation.inference import preprocess
from modelcycle.runs import read_manifest
from modelcycle.serve.process import ServerProcess
from text_fixtures import train_text_classifier

TEXTS = ["The for statement iterates over the items of a sequence.", "Raise an exception.", "Ünïcode ✓ text"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    return train_text_classifier(tmp_path_factory.mktemp("kserve-text"))


@pytest.fixture(scope="module")
def url(trained: Path, text_run: Path):
    with ServerProcess([trained, text_run], "serve.max_images=16", "serve.max_batch_delay_ms=5") as server:
        yield server.url


@pytest.fixture
def client(url: str):
    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def sample(images: list[Path]) -> list[Path]:
    return images[::5][:6]


@pytest.fixture(scope="module")
def expected(url: str, sample: list[Path]) -> np.ndarray:
    """/v1/predict's class probabilities for ``sample``, in class order: what every v2 answer must be."""
    answer = httpx.post(url + "/v1/predict?model=shapes&topk=3", json={"images": [b64_file(p) for p in sample]})
    assert answer.status_code == 200, answer.text
    probs = np.zeros((len(sample), 3), np.float32)
    for row, prediction in zip(probs, answer.json()["predictions"], strict=True):
        for ranked in prediction["topk"]:
            row[ranked["index"]] = ranked["probability"]
    return probs


@pytest.fixture(scope="module")
def pixels(trained: Path, sample: list[Path]) -> np.ndarray:
    """``sample`` preprocessed as the package says: the FP32 ``input`` tensor."""
    return preprocess(read_manifest(trained), [(p, 0) for p in sample]).numpy()


def fp32_input(pixels: np.ndarray, binary: bool):
    tensor = triton.InferInput("input", list(pixels.shape), "FP32")
    return tensor.set_data_from_numpy(pixels, binary_data=binary)


def bytes_input(name: str, items: list[bytes], binary: bool):
    tensor = triton.InferInput(name, [len(items)], "BYTES")
    return tensor.set_data_from_numpy(np.asarray(items, dtype=object), binary_data=binary)


def labels_of(probs: np.ndarray) -> list[str]:
    return [f"class_{i}" for i in probs.argmax(1)]


def strings(array: np.ndarray) -> list[str]:
    """A BYTES output as text: tritonclient gives bytes from binary data and str from JSON."""
    return [item.decode() if isinstance(item, bytes) else item for item in array.ravel()]


def test_importing_the_client_patches_nothing_in_this_process():
    """tritonclient.http runs on gevent; the import alone must leave sockets, threads and asyncio
    as they are, or every other test in this process would run on patched ones."""
    import socket
    import threading

    import gevent.monkey
    import tritonclient.http.aio  # noqa: F401

    assert not gevent.monkey.is_anything_patched()
    assert socket.socket.__module__ == "socket" and threading.Thread.__module__ == "threading"


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_model_metadata("shapes")
    version = meta["versions"][0]
    assert client.is_model_ready("shapes") and client.is_model_ready("shapes", version)
    assert not client.is_model_ready("nope") and not client.is_model_ready("shapes", "0" * 12)
    assert {e["name"]: (e["datatype"], e["shape"]) for e in meta["inputs"]} == {
        "input": ("FP32", [-1, 3, 16, 16]),
        "image_bytes": ("BYTES", [-1]),
    }
    assert {e["name"]: e["datatype"] for e in meta["outputs"]} == {
        "probabilities": "FP32",
        "logits": "FP32",
        "label": "BYTES",
    }
    assert client.get_model_metadata("shapes", version)["name"] == "shapes"
    server = client.get_server_metadata()
    assert server["name"] == "modelcycle" and {"binary_tensor_data", "classification"} <= set(server["extensions"])
    text = client.get_model_metadata("topics")
    assert text["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_pixel_tensor_gets_the_predict_answers(client, pixels, expected, binary):
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("probabilities", "label")]
    result = client.infer("shapes", [fp32_input(pixels, binary)], outputs=outputs, request_id=f"r-{binary}")
    response = result.get_response()
    assert response["id"] == f"r-{binary}" and response["model_name"] == "shapes"
    assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) is binary
    probs = result.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == expected.shape
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert strings(result.as_numpy("label")) == labels_of(expected)


@pytest.mark.parametrize("binary", [False, True], ids=["json-base64", "binary-raw"])
def test_image_files_get_the_predict_answers(client, sample, expected, binary):
    # binary data carries the files' own bytes; JSON cannot, so there they are base64 text
    items = [p.read_bytes() if binary else b64_file(p).encode() for p in sample]
    result = client.infer("shapes", [bytes_input("image_bytes", items, binary)])  # no outputs: all, binary
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
    assert result.as_numpy("logits").argmax(1).tolist() == expected.argmax(1).tolist()
    assert strings(result.as_numpy("label")) == labels_of(expected)


def test_a_pinned_version_and_a_compressed_request(client, pixels, expected):
    version = client.get_model_metadata("shapes")["versions"][0]
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            "shapes",
            [fp32_input(pixels, True)],
            model_version=version,
            request_compression_algorithm=algorithm,
        )
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_the_classification_extension_ranks_classes(client, pixels, expected, binary):
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)]
    ranked = client.infer("shapes", [fp32_input(pixels, binary)], outputs=outputs).as_numpy("probabilities")
    assert ranked.shape == (len(pixels), 2)
    for row, want in zip(ranked, expected, strict=True):
        parsed = [(float(value), int(index), label) for value, index, label in (e.split(":") for e in strings(row))]
        top = np.argsort(-want, kind="stable")[:2]
        assert [index for _, index, _ in parsed] == top.tolist()
        assert [label for _, _, label in parsed] == [f"class_{i}" for i in top]
        assert [value for value, _, _ in parsed] == pytest.approx(want[top], abs=1e-5)


def test_the_timeout_parameter_is_honoured(client, pixels, expected):
    result = client.infer("shapes", [fp32_input(pixels, True)], timeout=30_000_000)  # 30 s, in µs
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("shapes", [fp32_input(pixels, True)], timeout=1)  # 1 µs: gone before the model answers
    assert caught.value.status() == "504" and "timeout" in caught.value.message()


def test_errors_reach_the_client_with_our_message(client, pixels):
    cases = [
        (lambda: client.infer("shapes", [fp32_input(pixels[:, :, :8, :8].copy(), True)]), "400", "expected"),
        (lambda: client.infer("nope", [fp32_input(pixels, True)]), "404", "no model named 'nope'"),
        (lambda: client.get_model_metadata("nope"), "404", "this server has shapes"),
        (lambda: client.infer("shapes", [fp32_input(pixels, True)], priority=1), "400", "priority"),
        (lambda: client.infer("shapes", [fp32_input(pixels, True)], sequence_id=7), "400", "stateless"),
        (lambda: client.infer("shapes", [fp32_input(pixels, True)], parameters={"k": 1}), "400", "unknown parameter"),
    ]
    for call, status, fragment in cases:
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == status and fragment in caught.value.message(), caught.value


def test_the_asyncio_client(url, pixels, expected):
    import tritonclient.http.aio as aio

    async def run() -> np.ndarray:
        client = aio.InferenceServerClient(url.removeprefix("http://"))
        try:
            assert await client.is_server_ready()
            tensor = aio.InferInput("input", list(pixels.shape), "FP32").set_data_from_numpy(pixels)
            return (await client.infer("shapes", [tensor])).as_numpy("probabilities")
        finally:
            await client.close()

    np.testing.assert_allclose(asyncio.run(run()), expected, atol=1e-5)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_text_classifier_takes_bytes_strings(client, text_run, binary):
    want = modelcycle.predict(text_run, TEXTS, topk=1)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("label", "probabilities")]
    result = client.infer("topics", [bytes_input("text", [t.encode() for t in TEXTS], binary)], outputs=outputs)
    assert strings(result.as_numpy("label")) == [w["label"] for w in want]
    assert result.as_numpy("probabilities").max(1) == pytest.approx([w["probability"] for w in want], abs=1e-4)


def test_a_binary_text_that_is_not_utf8_is_refused(url):
    raw = b"\x05\x00\x00\x00ab\xffcd"
    header = b'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":9}}]}'
    lengths = {"Inference-Header-Content-Length": str(len(header))}
    answer = httpx.post(url + "/v2/models/topics/infer", content=header + raw, headers=lengths)
    assert answer.status_code == 400 and "not UTF-8" in answer.json()["error"], answer.text
