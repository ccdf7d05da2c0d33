"""The API fuzzed from its own OpenAPI document (schemathesis), as an admin with a bearer token: whatever
the input, never a 500."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from scp.api import ROUTES

from .scp_support import ADMIN, Scp


@pytest.fixture(scope="module")
def server():
    server = Scp()
    yield server
    assert "Traceback" not in server.stop()


def test_no_input_makes_a_500(server):
    admin = server.login(*ADMIN)
    csrf = server.api(admin, "GET", "/api/me").json()["csrf"]
    made = server.api(admin, "POST", "/api/api-tokens", csrf, json={"name": "fuzz", "days": 1})
    headers = {"Authorization": f"Bearer {made.json()['token']}"}
    schema = schemathesis.openapi.from_url(server.base + "/api/openapi.json")
    schema.config.update(base_url=server.base)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len({(r.method, r.path) for r in ROUTES})
    calls: list[int] = []

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            response = case.call(headers=headers, timeout=10)
            calls.append(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])
            try:
                document = response.json()
            except ValueError:
                document = None
            what = (case.operation.label, case.path_parameters, response.status_code, response.text[:200])
            assert isinstance(document, dict), what  # JSON, errors included

        fuzz()
    assert len(calls) >= len(operations) and 500 not in calls


def test_the_document_lists_every_route():
    from scp.api import openapi

    doc = openapi()
    assert {(r.method.lower(), r.path) for r in ROUTES} == {
        (m, p) for p, ops in doc["paths"].items() for m in ops
    }
