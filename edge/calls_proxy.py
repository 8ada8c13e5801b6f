"""``/cloudflare/...``: the Calls proxy routes of PROTOCOL.md.

Until the proxy is built, the known routes answer 503 "Cloudflare Calls is not
configured"; any other path under ``/cloudflare/`` answers 404, whether or not
Calls is configured.
"""

import re
from typing import Any

from litestar import Request, route
from litestar.enums import HttpMethod

from edge.errors import ApiError

_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (method, re.compile(pattern))
    for method, pattern in (
        ("POST", r"session"),
        ("POST", r"session/[^/]+/tracks/new"),
        ("PUT", r"session/[^/]+/renegotiate"),
        ("GET", r"session/[^/]+"),
        ("PUT", r"session/[^/]+/tracks/close"),
        ("PUT", r"session/[^/]+/tracks/update"),
        ("POST", r"session/[^/]+/datachannels/new"),
        ("POST", r"session/[^/]+/datachannels/establish"),
        ("PUT", r"session/[^/]+/datachannels/close"),
        ("GET", r"ice-servers"),
    )
)


def known_route(method: str, path: str) -> bool:
    return any(m == method and p.fullmatch(path) for m, p in _ROUTES)


@route(
    "/cloudflare/{path:path}",
    http_method=[
        HttpMethod.GET,
        HttpMethod.POST,
        HttpMethod.PUT,
        HttpMethod.DELETE,
        HttpMethod.PATCH,
    ],
)
async def calls_proxy(path: str, request: "Request[Any, Any, Any]") -> None:
    if not known_route(request.method, path.strip("/")):
        raise ApiError(404, "Unknown Cloudflare endpoint", "unknown_endpoint")
    raise ApiError(503, "Cloudflare Calls is not configured", "calls_not_configured")
