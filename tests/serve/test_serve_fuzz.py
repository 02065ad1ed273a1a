"""Fuzz every operation of the running server from its own OpenAPI spec: whatever schemathesis
generates, valid or deliberately not, the answer is never a 5xx and every error is JSON.

Driven through schemathesis' Python API and hypothesis directly: its pytest plugin does not work
with the pytest we pin (it reads a private attribute pytest 9 dropped).
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode


def operations(url: str) -> list:
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(operation, mode: GenerationMode, url: str, session: requests.Session, calls: list[int]) -> None:
    @given(case=operation.as_strategy(mode))
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        response = case.call(base_url=url, session=session, timeout=30)
        calls.append(response.status_code)
        where = f"{operation.label} -> {response.status_code}: {response.text[:300]}"
        assert response.status_code < 500, where
        if response.status_code >= 400:
            assert "error" in response.json(), where

    try:
        check()
    except Unsatisfiable:
        # an operation with no parameters and no body has no invalid form to send
        assert mode is GenerationMode.NEGATIVE, operation.label


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_makes_a_server_error(server, mode):
    found = operations(server.url)
    assert len(found) >= 10, [op.label for op in found]  # the spec describes every endpoint
    session = requests.Session()
    calls: list[int] = []
    for operation in found:
        fuzz(operation, mode, server.url, session, calls)
    assert len(calls) >= 5 * len(found)
    if mode is GenerationMode.NEGATIVE:
        assert any(400 <= code < 500 for code in calls)  # invalid input was really sent, and refused
