"""Issue 14: the LM server fuzzed from its own OpenAPI spec, as tests/serve/test_serve_fuzz.py
fuzzes the image server (the same driver): whatever schemathesis generates, valid or not, the
answer is never a 5xx and every error is JSON."""

from __future__ import annotations

import pytest
import requests
from schemathesis import GenerationMode
from test_chat_template_sandbox import package  # noqa: F401 - the tiny chat package, a fixture

from modelcycle.serve.process import ServerProcess
from serve.test_serve_fuzz import fuzz, operations


@pytest.fixture(scope="module")
def lm_server(package):  # noqa: F811 - the fixture imported above
    # few tokens per answer: the fuzzer sends hundreds of requests, each may generate
    with ServerProcess([package], "serve.max_new_tokens=4", env={"OMP_NUM_THREADS": "1"}) as process:
        yield process


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_makes_a_server_error(lm_server, mode):
    found = operations(lm_server.url)
    labels = {op.label for op in found}
    assert {"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models/{name}"} <= labels, labels
    session = requests.Session()  # one keep-alive connection: a reset would fail the next call
    calls: list[int] = []
    for operation in found:
        fuzz(operation, mode, lm_server.url, session, calls)
    assert len(calls) >= 5 * len(found)
    if mode is GenerationMode.POSITIVE:
        assert calls.count(200) > len(found)  # valid requests, completions included, were answered
    else:
        assert any(400 <= code < 500 for code in calls)  # invalid input was really sent, and refused
