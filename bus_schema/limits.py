"""Bounds on what a client can make a room keep, shared by edges (which refuse
a frame that breaks them) and actors (which refuse a command that does, so a
compromised or outdated edge cannot grow a room either).

Together with the actor's per-participant and per-room caps (settings
``CALLS_SESSIONS_PER_PARTICIPANT``, ``CALLS_SESSIONS_PER_ROOM``,
``ROOM_STATE_MAX_BYTES``) they keep a room's stored state, its snapshot and a
newcomer's ``welcome`` well under NATS ``max_payload`` (docs/security.md).
"""

import re

import msgspec

from bus_schema.ids import is_token_id
from bus_schema.state import TRACK_KINDS, TRACK_LOCATIONS, Track

MAX_TRACKS = 8
"""Tracks one participant announces with its ``cloudflare-session`` (a camera,
a microphone, a screen and its sound are four)."""
MAX_TRACK_NAME = 64
"""Characters in a ``trackName`` (Calls clients use UUIDs: 36)."""
MAX_MID = 16
"""Characters in a track's ``mid`` (Calls gives small numbers)."""
MAX_TRACKS_BYTES = 1152
"""The announced tracks of one participant, as stored (JSON, UTF-8). Eight
tracks as Calls clients describe them fit (a UUID name, kind, mid, location
and a 32-character session id: 143 bytes each)."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(value: str) -> bool:
    return _CONTROL.search(value) is None


def track_problem(tracks: list[Track]) -> str | None:
    """Why these announced tracks cannot be kept, or ``None`` when they can."""
    if len(tracks) > MAX_TRACKS:
        return f"at most {MAX_TRACKS} tracks"
    for track in tracks:
        name = track.trackName
        if not name or len(name) > MAX_TRACK_NAME or not _printable(name):
            return f"`trackName` must be 1 to {MAX_TRACK_NAME} printable characters"
        if track.kind is not None and track.kind not in TRACK_KINDS:
            return "a track's `kind` must be audio or video"
        if track.location is not None and track.location not in TRACK_LOCATIONS:
            return "a track's `location` must be local or remote"
        if track.mid is not None and (len(track.mid) > MAX_MID or not _printable(track.mid)):
            return f"a track's `mid` must be at most {MAX_MID} printable characters"
        if track.sessionId is not None and not is_token_id(track.sessionId):
            return "a track's `sessionId` must be a Calls session id"
    if sum(_size(t) for t in tracks) > MAX_TRACKS_BYTES:
        return f"the tracks take more than {MAX_TRACKS_BYTES} bytes"
    return None


def _size(track: Track) -> int:
    return len(msgspec.json.encode(track))
