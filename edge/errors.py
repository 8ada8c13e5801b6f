"""HTTP errors as the protocol wants them: ``{"error": "...", "code": "..."}``.

Every exception is translated here; a client never sees a stack trace or an
internal detail. Unexpected errors get a generic message with a request id, and
the detail goes to the server log under the same id.
"""

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException

from bus_schema.ids import new_token_id

log = logging.getLogger(__name__)


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
    body: dict[str, str] = {"error": exc.detail or _DEFAULT_MESSAGES.get(status, "Error")}
    if isinstance(exc, ApiError) and exc.code:
        body["code"] = exc.code
    elif status != 400 and exc.detail in {"Not Found", "Method Not Allowed"}:
        body["error"] = _DEFAULT_MESSAGES[status]
    headers = dict(exc.headers or {})
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[object]:
    request_id = new_token_id()
    log.error(
        "request %s %s %s failed",
        request_id,
        request.method,
        request.url.path,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    body = {"error": "Internal server error", "code": "internal", "request_id": request_id}
    return Response(body, status_code=500, media_type=MediaType.JSON)
