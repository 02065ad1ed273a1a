"""One `modelcycle serve` process hosting an image classifier, a text classifier and a language
model side by side (issue 15): each answers on its own protocols, /v1/models lists them all, and
each protocol keeps its own error shape."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

import modelcycle
from helpers import b64_file, one_torch_thread
from modelcycle.serve.process import ServerProcess
from text_fixtures import train_text_classifier


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    return train_text_classifier(tmp_path_factory.mktemp("mixed-text"))


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    from lm.tiny_lm import write_run

    return write_run(tmp_path_factory.mktemp("mixed-lm") / "runs" / "chat")


@pytest.fixture(scope="module")
def mixed(trained: Path, text_run: Path, lm_run: Path):
    server = ServerProcess([trained, text_run, lm_run], "serve.max_batch_delay_ms=5")
    with server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def test_models_lists_every_kind_for_both_kinds_of_client(mixed):
    listed = mixed.get("/v1/models").json()
    assert {m["name"]: m["task"] for m in listed["models"]} == {
        "shapes": "classify",
        "topics": "text_classify",
        "chat": "sft",
    }
    assert listed["object"] == "list"
    assert {m["id"]: m["task"] for m in listed["data"]} == {
        "shapes": "classify",
        "topics": "text_classify",
        "chat": "sft",
    }


def test_the_image_classifier_answers_v1_and_v2(mixed, images):
    body = {"images": [b64_file(images[0])]}
    answer = mixed.post("/v1/predict?model=shapes", json=body)
    assert answer.status_code == 200 and answer.json()["model"] == "shapes"
    v2 = mixed.post(
        "/v2/models/shapes/infer",
        json={"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": body["images"]}]},
    )
    assert v2.status_code == 200 and v2.json()["outputs"][-1]["name"] == "label"


def test_the_text_classifier_answers_v1_and_v2_as_predict_does(mixed, text_run):
    texts = ["The for statement iterates over the items of a sequence.", "Raise an exception."]
    want = modelcycle.predict(text_run, texts, topk=3)
    answer = mixed.post("/v1/predict?model=topics", json={"texts": texts, "topk": 3})
    assert answer.status_code == 200, answer.text
    got = answer.json()["predictions"]
    assert [p["label"] for p in got] == [w["label"] for w in want]
    assert [p["probability"] for p in got] == pytest.approx([w["probability"] for w in want], abs=1e-4)
    v2 = mixed.post(
        "/v2/models/topics/infer",
        json={
            "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts}],
            "outputs": [{"name": "label"}],
        },
    )
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["data"] == [w["label"] for w in want]
    meta = mixed.get("/v2/models/topics").json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    # an image body for the text model, and texts for the image model: 4xx in our shape, never a 500
    wrong = mixed.post("/v1/predict?model=topics", json={"images": ["aGk="]})
    assert wrong.status_code == 422 and "texts" in wrong.json()["error"]
    wrong = mixed.post("/v1/predict?model=shapes", json={"texts": ["hello"]})
    assert wrong.status_code == 422 and "images" in wrong.json()["error"]
    wrong = mixed.post(
        "/v2/models/topics/infer", json={"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    )
    assert wrong.status_code == 400 and "BYTES" in wrong.json()["error"]


def test_the_language_model_answers_the_openai_api_with_openai_errors(mixed):
    chat = mixed.post(
        "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0},
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["object"] == "chat.completion" and chat.json()["usage"]["completion_tokens"] >= 1
    text = mixed.post("/v1/completions", json={"model": "chat", "prompt": "for", "max_tokens": 3, "temperature": 0})
    assert text.status_code == 200 and text.json()["choices"][0]["text"] is not None
    bad = mixed.post("/v1/chat/completions", json={"model": "chat", "messages": "not a list"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    unknown = mixed.post(
        "/v1/chat/completions", json={"model": "shapes", "messages": [{"role": "user", "content": "x"}]}
    )
    assert unknown.status_code == 404 and "does not exist" in unknown.json()["error"]["message"]
    assert mixed.get("/v1/models/chat").json()["id"] == "chat"


def test_health_and_metrics_cover_every_model(mixed):
    assert mixed.get("/v2/health/ready").status_code == 200
    metrics = mixed.get("/metrics").text
    assert 'modelcycle_queue_depth{model="topics"}' in metrics
    assert 'modelcycle_lm_pending_requests{model="chat"}' in metrics
