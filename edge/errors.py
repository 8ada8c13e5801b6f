"""HTTP errors as the protocol wants them: ``{"error": "...", "code": "..."}``.

Every exception is translated here; a client never sees a stack trace or an
internal detail. Unexpected errors get a generic message with a request id, and
the detail goes to the server log under the same id.
"""

import logging
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from bus_schema.ids import new_token_id

log = logging.getLogger(__name__)

RETRY_AFTER = "2"
"""Seconds a client waits before trying a 503 again: the bus is unavailable
(JetStream electing leaders takes a few seconds), or this edge is draining."""


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """Every HTTP error: a human message, and a machine-readable code."""

    error: str
    code: str | None = None
    request_id: str | None = None


class ApiError(HTTPException):
    """An error with a status, a human message and a machine-readable code."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(detail=message, status_code=status)
        self.code = code


_DEFAULT_MESSAGES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Request body too large",
    429: "Too many requests",
}


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[object]:
    status = exc.status_code
    if isinstance(exc, ApiError):
        body = ErrorBody(error=exc.detail, code=exc.code)
    elif status == 400:
        body = ErrorBody(
            error=f"Invalid request body: {_validation_message(exc)}", code="invalid_body"
        )
    else:
        body = ErrorBody(error=_DEFAULT_MESSAGES.get(status, exc.detail or "Error"))
    headers = dict(exc.headers or {})
    if status == 503:
        headers.setdefault("Retry-After", RETRY_AFTER)
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def _validation_message(exc: HTTPException) -> str:
    """Litestar's own 400s (a body that is not JSON or has the wrong shape)."""
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list) and exc.extra:
        first = exc.extra[0]
        if isinstance(first, dict) and "message" in first:
            where = f" at `{first['key']}`" if first.get("key") not in (None, "data") else ""
            return f"{first['message']}{where}"
    return exc.detail


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[object]:
    request_id = new_token_id()
    log.error(
        "request %s %s %s failed",
        request_id,
        request.method,
        request.url.path,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    body = ErrorBody(error="Internal server error", code="internal", request_id=request_id)
    return Response(body, status_code=500, media_type=MediaType.JSON)


def too_deep(request: Request[Any, Any, Any], exc: Exception) -> Response[object]:
    """A JSON body nested deeper than msgspec recurses (Litestar decodes it
    before our handler runs; the error is RecursionError, not a DecodeError).
    Nothing of ours recurses on input, so this is the client's body: a 400,
    logged without a traceback."""
    log.info("%s %s: request body nested too deeply", request.method, request.url.path)
    body = ErrorBody(error="Invalid request body: nested too deeply", code="invalid_body")
    return Response(body, status_code=400, media_type=MediaType.JSON)


def not_ready(request: Request[Any, Any, Any], exc: Exception) -> Response[object]:
    """NATS or KV unreachable while answering: 503, the client may retry."""
    log.info("%s %s: not ready (%s)", request.method, request.url.path, exc)
    body = ErrorBody(error="Service not ready, try again", code="not_ready")
    return Response(
        body, status_code=503, media_type=MediaType.JSON, headers={"Retry-After": RETRY_AFTER}
    )


def exception_handlers() -> ExceptionHandlersMap:
    """What the app installs: every exception becomes an ``ErrorBody``."""
    from edge.bus import NotReady

    return {
        HTTPException: http_error,
        NotReady: not_ready,
        RecursionError: too_deep,
        Exception: internal_error,
    }
