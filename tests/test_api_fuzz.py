"""Schemathesis against the served OpenAPI spec: valid requests get 200, invalid ones a 4xx, none a 5xx.

Hypothesis drives schemathesis' strategies directly (its pytest plugin does not run under pytest 9),
derandomized so every run sends the same cases.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import TypeAdapter, ValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from eta.serving.api import EARLIEST, LATEST


@pytest.mark.parametrize("path", ["/eta/order", "/eta/quote"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(service_url, path, mode):
    operation = schemathesis.openapi.from_url(f"{service_url}/docs.json")[path]["POST"]
    statuses: list[int] = []
    answered: dict[bool, list[tuple[int, str]]] = {True: [], False: []}  # by: inside the API's contract

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)
    def call(case) -> None:
        response = case.call_and_validate(base_url=service_url, checks=[not_a_server_error])
        statuses.append(response.status_code)
        answered[_within_contract(case.body)].append((response.status_code, f"{case.body} -> {response.text[:300]}"))

    call()
    assert statuses and max(statuses) < 500
    if mode is GenerationMode.POSITIVE:
        # Two rules the OpenAPI spec cannot state: a body is required, and times lie in [2000, 2100).
        refused = [detail for status, detail in answered[True] if status != 200]
        assert len(answered[True]) >= 10 and not refused, f"every valid request is answered; refused: {refused[:3]}"
        assert {status for status, _ in answered[False]} <= {422}
    else:
        assert min(statuses) >= 400, "an invalid request was answered as if valid"


def _within_contract(body) -> bool:
    """A schema-valid request the service must answer: it has a body, and a time (if any) in the API's range."""
    if not isinstance(body, dict):
        return False
    if body.get("created_at") is None:
        return True
    try:  # parsed as the service parses it
        created = TypeAdapter(datetime).validate_python(body["created_at"])
    except ValidationError:
        return False
    return EARLIEST <= (created if created.tzinfo else created.replace(tzinfo=timezone.utc)) < LATEST
