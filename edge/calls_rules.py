"""What the Calls proxy lets through: its routes (who may call each one, which
create something and so are never retried once sent) and the room rule for
the sessions a request body names. Pure: no I/O (`edge.calls_proxy` asks the
actors and KV, and forwards)."""

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from edge.errors import ApiError


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: "re.Pattern[str]"
    upstream: str
    """The upstream path under ``/apps/{app}``; ``{sid}`` is the session id."""
    access: str
    """``create`` (a new session), ``room`` (any participant of the session's room),
    ``owner`` (the session's creator only) or ``ice`` (any participant)."""
    creates: bool = False
    """Never retried once the request may have reached Cloudflare."""
    pulls: bool = False
    """The body asks for other sessions' tracks or data channels: every item
    that is not ``local`` must name its session."""
    located: bool = False
    """The body's items say where they are (``local``: pushed; otherwise
    pulled): the token's ``can_publish`` and ``can_subscribe`` apply to them."""


_S = r"session/(?P<sid>[^/]+)"
ROUTES: tuple[Route, ...] = (
    Route("POST", re.compile(r"session"), "/sessions/new", "create", creates=True),
    Route("GET", re.compile(_S), "/sessions/{sid}", "room"),
    Route(
        "POST",
        re.compile(_S + r"/tracks/new"),
        "/sessions/{sid}/tracks/new",
        "owner",
        creates=True,
        pulls=True,
        located=True,
    ),
    Route("PUT", re.compile(_S + r"/renegotiate"), "/sessions/{sid}/renegotiate", "owner"),
    Route("PUT", re.compile(_S + r"/tracks/close"), "/sessions/{sid}/tracks/close", "owner"),
    Route("PUT", re.compile(_S + r"/tracks/update"), "/sessions/{sid}/tracks/update", "owner"),
    Route(
        "POST",
        re.compile(_S + r"/datachannels/new"),
        "/sessions/{sid}/datachannels/new",
        "owner",
        creates=True,
        pulls=True,
        located=True,
    ),
    Route(
        "POST",
        re.compile(_S + r"/datachannels/establish"),
        "/sessions/{sid}/datachannels/establish",
        "owner",
        creates=True,
        located=True,
    ),
    Route(
        "PUT",
        re.compile(_S + r"/datachannels/close"),
        "/sessions/{sid}/datachannels/close",
        "owner",
    ),
    Route("GET", re.compile(r"ice-servers"), "", "ice"),
)


def find_route(method: str, path: str) -> tuple[Route, str | None] | None:
    """The route for a path under ``/cloudflare/``, and its session id."""
    for candidate in ROUTES:
        match = candidate.pattern.fullmatch(path)
        if match and candidate.method == method:
            return candidate, match.groupdict().get("sid")
    return None


_ITEM_LISTS = ("tracks", "dataChannels")
_ITEMS = ("dataChannel",)
_ITEM_FIELDS = ("location", "sessionId")
_FOLDED = {name.casefold(): name for name in (*_ITEM_LISTS, *_ITEMS, *_ITEM_FIELDS)}
"""Cloudflare's decoder may match field names without regard to case (as Go's
encoding/json does): a key that folds to a checked name but is spelled
otherwise is refused rather than guessed at."""


def _invalid(message: str) -> ApiError:
    return ApiError(400, message, "invalid_body")


def _unambiguous(document: dict[str, Any], names: tuple[str, ...]) -> None:
    for key in document:
        canonical = _FOLDED.get(key.casefold())
        if canonical is not None and canonical in names and key != canonical:
            raise _invalid(f"Unexpected field `{key}` (did you mean `{canonical}`?)")


@dataclass(frozen=True, slots=True)
class References:
    """What a request body asks of Calls, as the room rule and the grants read it."""

    body: bytes
    """The body to forward (re-encoded from what was checked)."""
    named: set[str]
    """Every Calls session it names."""
    local: bool = False
    """Some item is ``local``: the caller pushes (publishes) a track or channel."""
    remote: bool = False
    """Some item is not ``local``: the caller pulls another session's."""


def session_references(body: bytes, *, pulls: bool) -> References:
    """The body to forward, every Calls session it names, and whether it
    pushes or pulls.

    Exactly what the room rule reads is decoded: the items of ``tracks`` and
    ``dataChannels`` and the ``dataChannel`` object, their ``location`` and
    ``sessionId``. Every item that names a session is counted; with ``pulls``
    an item that is not ``local`` must name one. Anything those fields cannot
    be read from is refused (400), never waved through. The body goes on
    re-encoded from what was checked, so a duplicate key or a trick of the
    JSON text cannot make Cloudflare read something else."""
    if not body.strip():
        return References(body, set())
    try:
        document = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise _invalid("Invalid JSON body") from None
    if not isinstance(document, dict):
        raise _invalid("The body must be a JSON object")
    _unambiguous(document, (*_ITEM_LISTS, *_ITEMS))
    items: list[object] = []
    for name in _ITEM_LISTS:
        if name in document:
            listed = document[name]
            if not isinstance(listed, list):
                raise _invalid(f"`{name}` must be a list")
            items.extend(listed)
    items.extend(document[name] for name in _ITEMS if name in document)
    named: set[str] = set()
    local = remote = False
    for item in items:
        if not isinstance(item, dict):
            raise _invalid("Tracks and data channels must be JSON objects")
        _unambiguous(item, _ITEM_FIELDS)
        location, session_id = item.get("location"), item.get("sessionId")
        if not isinstance(location, str | None) or not isinstance(session_id, str | None):
            raise _invalid("`location` and `sessionId` must be strings")
        if location == "local":
            local = True
        else:
            remote = True
        if session_id is not None:
            named.add(session_id)
        elif pulls and location != "local":
            raise _invalid("A track or data channel that is not local must name its `sessionId`")
    return References(msgspec.json.encode(document), named, local, remote)
