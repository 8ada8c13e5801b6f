"""schemathesis against the edge's own OpenAPI schema: no 5xx, and every answer
matches the schema (bounded examples per operation)."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

# Imported here, at a shallow stack. hypothesis imports them lazily, deep inside
# data generation, where CPython 3.11 can fail to compile a module with
# "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905).
import hypothesis.strategies._internal.collections
import hypothesis.strategies._internal.flatmapped
import hypothesis.strategies._internal.random
import hypothesis.strategies._internal.regex
import hypothesis.strategies._internal.types  # noqa: F401
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from edge.auth import TokenService
from tests.harness import JWT_SECRET, System


@pytest.fixture(scope="module")
def openapi_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenApiSchema]:
    system = System(Path(tmp_path_factory.mktemp("openapi")))
    try:
        asyncio.run(system.start())
        yield schemathesis.openapi.from_url(f"{system.edges[0].url}/schema/openapi.json")
    finally:
        system.stop()


CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
ADMIN = TokenService(JWT_SECRET, ttl=3600).issue_admin()


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
            # With an admin token, so the room service API is exercised beyond 401.
            case.call_and_validate(checks=CHECKS, headers={"Authorization": f"Bearer {ADMIN}"})

        check()
