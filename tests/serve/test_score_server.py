"""`modelcycle serve` on a reward package: a real server on 127.0.0.1 answering POST /v1/score."""

from __future__ import annotations

import httpx
import pytest

from modelcycle.packages import open_package
from modelcycle.serve.process import ServerProcess
from modelcycle.tasks.reward import reward_scores


def test_score_endpoint_returns_the_packages_scores(reward_run):
    prompt = "Explain `for` in Python."
    answers = ["The for statement iterates over the elements of a sequence.", "sequence the over for elements iterates"]
    loaded = open_package(reward_run.model_dir).load_sequence_classifier()
    messages = [[{"role": "user", "content": prompt}]] * 2
    want = reward_scores(loaded.model, loaded.tokenizer, messages, answers, 96).tolist()
    with ServerProcess([reward_run.path]) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        listed = client.get("/v1/models").json()["data"]
        assert [m["task"] for m in listed] == ["reward"]
        answer = client.post("/v1/score", json={"prompt": prompt, "responses": answers})
        assert answer.status_code == 200, answer.text
        assert answer.json()["scores"] == pytest.approx(want, abs=1e-4)
        chat = client.post(
            "/v1/score",
            json={"model": listed[0]["id"], "prompt": [{"role": "user", "content": prompt}], "responses": answers},
        )
        assert chat.json()["scores"] == pytest.approx(want, abs=1e-4)
        unknown = client.post("/v1/score", json={"model": "nope", "prompt": "q", "responses": ["a"]})
        assert unknown.status_code == 404
        assert client.post("/v1/score", json={"prompt": "q", "responses": []}).status_code == 422
