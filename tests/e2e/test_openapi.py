"""schemathesis against the edge's own OpenAPI schema: no 5xx, and every answer
matches the schema (bounded examples per operation)."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.harness import System


@pytest.fixture(scope="module")
def openapi_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenApiSchema]:
    system = System(Path(tmp_path_factory.mktemp("openapi")))
    asyncio.run(system.start())
    try:
        yield schemathesis.openapi.from_url(f"{system.edges[0].url}/schema/openapi.json")
    finally:
        system.stop()


CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def test_openapi_operations(openapi_schema: OpenApiSchema) -> None:
    """Each operation in turn (schemathesis' pytest plugin does not support this
    pytest yet, so the operations are driven through its strategies directly)."""
    operations = [result.ok() for result in openapi_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/rooms", "/api/rooms/{room_id}/join"}
    for operation in operations:

        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        )
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS)

        check()
