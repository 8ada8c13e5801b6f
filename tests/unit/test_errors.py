"""An unexpected error reaches the client as a generic JSON error with a request
id; the detail is only in the server log."""

import logging

import pytest
from litestar import Litestar, get
from litestar.testing import TestClient

from edge.errors import exception_handlers


@get("/boom")
async def boom() -> None:
    raise RuntimeError("database password is hunter2")


def test_internal_errors_are_generic_with_a_request_id(caplog: pytest.LogCaptureFixture) -> None:
    app = Litestar([boom], exception_handlers=exception_handlers(), logging_config=None)
    with caplog.at_level(logging.ERROR, logger="edge.errors"), TestClient(app) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "Internal server error"
    assert body["code"] == "internal"
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    assert body["request_id"] in caplog.text
    assert "hunter2" in caplog.text  # the operator sees what happened


def test_unknown_routes_and_methods_are_json() -> None:
    app = Litestar([boom], exception_handlers=exception_handlers(), logging_config=None)
    with TestClient(app) as client:
        assert client.get("/nope").json() == {"error": "Not found"}
        assert client.post("/boom").json() == {"error": "Method not allowed"}
