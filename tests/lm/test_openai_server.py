"""`modelcycle serve` on an LM package, driven with the official ``openai`` client against a real
server on 127.0.0.1: answers equal the same greedy generation done here, in OpenAI's wire format."""

from __future__ import annotations

import json
import signal

import httpx
import openai
import pytest

from modelcycle.lm.load import load_lm
from modelcycle.lm.sampling import Sampling
from modelcycle.serve.process import ServerProcess

KEY = "test-key-123"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain the for statement"}]


@pytest.fixture(scope="module")
def lm(tiny_lm_run):
    return load_lm(tiny_lm_run, device="cpu")


@pytest.fixture(scope="module")
def server(tiny_lm_run):
    with ServerProcess(
        [tiny_lm_run],
        "--api-key-env",
        "LM_TEST_KEY",
        "serve.max_new_tokens=64",
        env={"LM_TEST_KEY": KEY, "OMP_NUM_THREADS": "1"},
    ) as process:
        yield process


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def expected(lm, max_tokens: int, stop: tuple[str, ...] = ()):
    return lm.generate([lm.chat_ids(MESSAGES)], Sampling(temperature=0, max_new_tokens=max_tokens, stop=stop))[0]


def test_models_lists_the_run_by_its_name(client, lm):
    [model] = client.models.list().data
    assert model.id == "tiny-chat" and model.object == "model"
    assert client.models.retrieve("tiny-chat").id == "tiny-chat"


def test_chat_completion_whole(client, lm):
    answer = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=8, temperature=0)
    want = expected(lm, 8)
    [choice] = answer.choices
    assert choice.message.role == "assistant" and choice.message.content == want.text
    assert choice.finish_reason == "length"
    assert answer.usage.prompt_tokens == len(lm.chat_ids(MESSAGES))
    assert answer.usage.completion_tokens == 8 and answer.usage.total_tokens == answer.usage.prompt_tokens + 8
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")


def test_chat_completion_streamed(client, lm):
    chunks = list(
        client.chat.completions.create(
            model="tiny-chat",
            messages=MESSAGES,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert len(with_choices) > 3  # piece by piece, not one block
    assert text == expected(lm, 12).text
    assert with_choices[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 12 and not chunks[-1].choices


def test_completions_batch_a_list_of_prompts_and_honour_stop(client, lm):
    prompts = ["def f(", "The with statement"]
    answer = client.completions.create(model="tiny-chat", prompt=prompts, max_tokens=10, temperature=0)
    want = lm.generate(prompts, Sampling(temperature=0, max_new_tokens=10))
    assert [c.text for c in sorted(answer.choices, key=lambda c: c.index)] == [g.text for g in want]
    assert answer.usage.completion_tokens == sum(len(g.token_ids) for g in want)

    stop = want[0].text[3:5]
    cut = client.completions.create(model="tiny-chat", prompt="def f(", max_tokens=10, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == want[0].text[: want[0].text.index(stop)]


def test_completions_streamed_for_a_batch_keep_each_prompts_index(client, lm):
    prompts = ["def f(", "The with statement"]
    texts = ["", ""]
    finish = [None, None]
    for chunk in client.completions.create(
        model="tiny-chat", prompt=prompts, max_tokens=10, temperature=0, stream=True
    ):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            finish[choice.index] = choice.finish_reason or finish[choice.index]
    want = lm.generate(prompts, Sampling(temperature=0, max_new_tokens=10))
    assert texts == [g.text for g in want]
    assert finish == [g.finish_reason for g in want]


def test_a_wrong_or_missing_key_is_401(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    response = httpx.post(server.url + "/v1/completions", json={"model": "tiny-chat", "prompt": "x"})
    assert response.status_code == 401 and "Bearer" in response.json()["error"]["message"]


def test_a_prompt_longer_than_the_context_is_400_with_the_limit(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "word " * 300}])
    assert "maximum context length is 128 tokens" in info.value.message
    assert info.value.body["code"] == "context_length_exceeded" and info.value.body["param"] == "messages"


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        (b"{not json", 400, "JSON"),
        (b'{"model": "tiny-chat", "messages": "hi"}', 400, "messages"),
        (
            b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}',
            400,
            "temperature",
        ),
        (b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 999}', 400, "64"),
        (b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "n": 30}', 400, "serve.max_n"),
        (b'{"model": "other", "messages": [{"role": "user", "content": "hi"}]}', 404, "tiny-chat"),
    ],
)
def test_bad_requests_are_4xx_json_errors_in_openais_shape(server, body, status, fragment):
    response = httpx.post(
        server.url + "/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"]


def test_metrics_count_requests_and_tokens_and_docs_work_offline(server):
    docs = httpx.get(server.url + "/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "/v1/chat/completions" in httpx.get(server.url + "/openapi.json").json()["paths"]
    text = httpx.get(server.url + "/metrics").text
    assert 'modelcycle_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert 'modelcycle_lm_tokens_total{kind="completion",model="tiny-chat"}' in text


def test_sigterm_lets_a_streaming_answer_finish(server, lm):
    """The last test to use the module's server: it stops it."""
    body = {"model": "tiny-chat", "messages": MESSAGES, "max_tokens": 64, "temperature": 0, "stream": True}
    lines = []
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    ) as response:
        for line in response.iter_lines():
            if line and not lines:
                server.process.send_signal(signal.SIGTERM)  # after the first event: mid-answer
            if line:
                lines.append(line)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == expected(lm, 64).text
    assert server.process.wait(30) == -signal.SIGTERM and "in-flight requests answered" in server.log


def test_one_server_gives_each_kind_its_protocols(tiny_lm_run, tmp_path):
    """Issue 15 changed this by design: one server now hosts language models beside image
    classifiers (tests/serve/test_mixed_server.py); each kind gets its own protocols."""
    from modelcycle.serve.server import protocols_of

    image = tmp_path / "digits" / "model"
    image.mkdir(parents=True)
    manifest = {"format": "modelcycle.package/1", "task": "classify", "architecture": {"name": "simple_cnn"}}
    (image / "modelcycle.json").write_text(json.dumps(manifest))
    found = protocols_of([str(tiny_lm_run), f"img={tmp_path / 'digits'}"])
    assert [(name, chosen) for name, _, chosen in found] == [
        ("tiny-chat", ("openai",)),
        ("img", ("predict_v1", "kserve_v2")),
    ]
