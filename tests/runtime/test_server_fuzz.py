"""Fuzz every operation of the served OpenAPI document: no input may make the server answer 500.

Schemathesis generates valid (positive) and invalid (negative) requests from the
document; each answer must not be a server error, its status code must be one
the document lists, and its body must match the documented schema.
"""

from __future__ import annotations

import copy

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance,  # noqa: E402
                                               response_schema_conformance, status_code_conformance)

from server_harness import ServerProcess  # noqa: E402

EXAMPLES = 30  # per operation and generation mode; keeps the run to a few seconds
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def server(color_bundle):
    proc = ServerProcess(color_bundle, "--max-body-mb", "1")
    yield proc
    assert proc.terminate() == 0


def served_document(url: str) -> dict:
    """The document as served, with path parameters steered towards the loaded model half the time."""
    doc = copy.deepcopy(httpx.get(url + "/openapi.json").json())
    for item in doc["paths"].values():
        for operation in item.values():
            for param in operation.get("parameters", []):
                if param["name"] == "name":
                    param["schema"] = {"type": "string", "enum": ["colors", "other"]}
                elif param["name"] == "version":
                    param["schema"] = {"type": "string", "enum": ["1", "2"]}
    return doc


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_input_makes_a_server_error(server, mode):
    schema = schemathesis.openapi.from_dict(served_document(server.url))
    generation_mode = schemathesis.GenerationMode(mode)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    seen_statuses: set[int] = set()
    for operation in operations:
        if mode == "negative" and not (operation.path_parameters or operation.body):
            continue  # nothing to make invalid: no parameters, no body
        strategy = operation.as_strategy(generation_mode=generation_mode)

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case):
            response = case.call(base_url=server.url, timeout=30)
            seen_statuses.add(response.status_code)
            case.validate_response(response, checks=CHECKS)

        check()
    assert 500 not in seen_statuses
    assert ({200, 400, 404} if mode == "positive" else {400, 404}) <= seen_statuses
