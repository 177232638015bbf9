"""Schemathesis against the served OpenAPI spec: valid and invalid requests alike never get a 5xx.

Hypothesis drives schemathesis' strategies directly (its pytest plugin does not run under pytest 9),
derandomized so every run sends the same cases.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode


@pytest.mark.parametrize("path", ["/eta/order", "/eta/quote"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(service_url, path, mode):
    operation = schemathesis.openapi.from_url(f"{service_url}/docs.json")[path]["POST"]
    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)
    def call(case) -> None:
        response = case.call_and_validate(base_url=service_url, checks=[not_a_server_error])
        statuses.append(response.status_code)

    call()
    assert statuses and max(statuses) < 500
    if mode is GenerationMode.NEGATIVE:
        assert min(statuses) >= 400, "an invalid request was answered as if valid"
