"""The HTTP API end to end: a real server process on 127.0.0.1, real HTTP, real images."""

from __future__ import annotations

import concurrent.futures
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

import modelcycle
from helpers import b64_file
from modelcycle.evaluation.inference import preprocess
from modelcycle.runs import read_manifest


@pytest.fixture(scope="module")
def sample(images: list[Path]) -> list[Path]:
    """8 images spread over the classes (the server under test takes 8 per request)."""
    return images[::5][:8]


@pytest.fixture(scope="module")
def offline(trained: Path, sample: list[Path]) -> dict[str, dict]:
    """What `modelcycle predict` says about each image: the answers the server must give."""
    return {r["path"]: r for r in modelcycle.predict(trained, sample, topk=3)}


def test_json_predict_gives_the_offline_answers(server, sample, offline):
    response = httpx.post(server.url + "/v1/predict?topk=3", json={"images": [b64_file(p) for p in sample]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "shapes" and re.fullmatch(r"[0-9a-f]{12}", body["version"])
    for path, prediction in zip(sample, body["predictions"], strict=True):
        expected = offline[str(path)]
        assert prediction["label"] == expected["label"]
        assert prediction["probability"] == pytest.approx(expected["probability"], abs=1e-5)
        assert [t["label"] for t in prediction["topk"]] == [t["label"] for t in expected["topk"]]


def test_multipart_upload_and_data_urls_work_too(server, sample, offline):
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in sample[:3]]
    multipart = httpx.post(server.url + "/v1/predict", files=files).json()
    data_url = httpx.post(server.url + "/v1/predict", json={"images": ["data:image/png;base64," + b64_file(sample[0])]})
    assert [p["label"] for p in multipart["predictions"]] == [offline[str(p)]["label"] for p in sample[:3]]
    assert len(multipart["predictions"][0]["topk"]) == 3  # 3 classes: top-5 is all of them
    assert data_url.json()["predictions"][0]["label"] == offline[str(sample[0])]["label"]


def test_kserve_v2_endpoints(server, trained, sample, offline):
    url = server.url
    assert httpx.get(url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(url + "/v2/health/ready").json() == {"ready": True}
    assert httpx.get(url + "/v2").json()["name"] == "modelcycle"
    meta = httpx.get(url + "/v2/models/shapes").json()
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 3, 16, 16]}
    version = meta["versions"][0]
    assert httpx.get(f"{url}/v2/models/shapes/versions/{version}/ready").json() == {"name": "shapes", "ready": True}

    # raw image files as BYTES
    request = {
        "id": "r1",
        "inputs": [
            {"name": "image_bytes", "shape": [2], "datatype": "BYTES", "data": [b64_file(p) for p in sample[:2]]}
        ],
    }
    answer = httpx.post(f"{url}/v2/models/shapes/infer", json=request).json()
    assert answer["id"] == "r1" and answer["model_version"] == version
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["label"]["data"] == [offline[str(p)]["label"] for p in sample[:2]]
    assert outputs["probabilities"]["shape"] == [2, 3]

    # a preprocessed FP32 tensor, as Triton-style clients send it, and a version-pinned route
    manifest = read_manifest(trained)
    tensor = preprocess(manifest, [(p, 0) for p in sample[:2]]).numpy()
    request = {
        "inputs": [{"name": "input", "shape": list(tensor.shape), "datatype": "FP32", "data": tensor.ravel().tolist()}],
        "outputs": [{"name": "probabilities"}],
    }
    answer = httpx.post(f"{url}/v2/models/shapes/versions/{version}/infer", json=request).json()
    assert [o["name"] for o in answer["outputs"]] == ["probabilities"]
    probs = np.asarray(answer["outputs"][0]["data"]).reshape(2, 3)
    assert probs.max(1) == pytest.approx([offline[str(p)]["probability"] for p in sample[:2]], abs=1e-5)


def test_unknown_models_and_versions_are_404_with_a_json_error(server):
    for path in ("/v2/models/nope", "/v2/models/shapes/versions/000000000000", "/no/such/page"):
        response = httpx.get(server.url + path)
        assert response.status_code == 404 and response.json()["error"], path
    response = httpx.post(server.url + "/v1/predict?model=nope", json={"images": ["AAAA"]})
    assert response.status_code == 404 and "shapes" in response.json()["error"]


def test_concurrent_requests_are_batched_and_answered_individually(server, sample, offline):
    def one(path: Path) -> str:
        return httpx.post(server.url + "/v1/predict", json={"images": [b64_file(path)]}).json()["predictions"][0][
            "label"
        ]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        labels = list(pool.map(one, sample * 4))
    assert labels == [offline[str(p)]["label"] for p in sample] * 4
    metrics = httpx.get(server.url + "/metrics").text
    # the histogram of images per model call saw fewer calls than images: some batches held several
    calls = float(re.search(r'modelcycle_batch_size_count\{model="shapes"\} (\S+)', metrics).group(1))
    images_done = float(re.search(r'modelcycle_images_total\{model="shapes"\} (\S+)', metrics).group(1))
    assert calls < images_done


def test_metrics_count_requests_by_route_and_status(server):
    httpx.post(server.url + "/v1/predict", json={"images": ["not base64!"]})
    text = httpx.get(server.url + "/metrics").text
    assert re.search(r'modelcycle_requests_total\{route="/v1/predict",status="400"\} [1-9]', text)
    assert 'modelcycle_queue_depth{model="shapes"}' in text
    assert "modelcycle_request_latency_seconds_bucket" in text


def test_openapi_docs_and_playground_are_served(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    for path in (
        "/v1/predict",
        "/v1/models",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}/infer",
        "/metrics",
    ):
        assert path in spec["paths"], path
    assert set(spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]) == {
        "application/json",
        "multipart/form-data",
    }
    docs = httpx.get(server.url + "/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert httpx.get(server.url + "/docs-assets/swagger-ui-bundle.js").status_code == 200  # no CDN needed
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "/v1/predict" in page.text


def test_several_models_under_their_own_names(trained, sample):
    from modelcycle.serve.process import ServerProcess

    with ServerProcess([trained, f"copy={trained}"]) as server:
        names = [m["name"] for m in httpx.get(server.url + "/v1/models").json()["models"]]
        assert names == ["shapes", "copy"]
        body = {"images": [b64_file(sample[0])]}
        a = httpx.post(server.url + "/v1/predict?model=copy", json=body).json()
        b = httpx.post(server.url + "/v1/predict", json=body).json()
        assert a["model"] == "copy" and b["model"] == "shapes"
        assert a["predictions"] == b["predictions"]


def test_ready_is_a_4xx_until_the_model_threads_run(trained):
    """The Open Inference Protocol reads readiness from the status code: 200 ready, 4xx not.
    Before the app's start-up has run, its batchers have no thread yet."""
    from starlette.testclient import TestClient

    from modelcycle.config import ServeSection
    from modelcycle.serve.app import create_app
    from modelcycle.serve.models import load_models

    app = create_app(load_models([str(trained)], "torch", 1_000_000), ServeSection())
    client = TestClient(app)  # outside `with`: the lifespan (start-up) has not run
    answer = client.get("/v2/health/ready")
    assert answer.status_code == 400 and answer.json() == {"ready": False}
    assert client.get("/v2/health/live").status_code == 200
    with TestClient(app) as started:
        assert started.get("/v2/health/ready").status_code == 200
