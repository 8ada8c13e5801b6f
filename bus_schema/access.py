"""Who may enter a room and what each participant may do (docs/access.md):
join policies, the grants a token carries, identities. Shared by edges (which
check a token's grants on every frame and call) and actors (which keep the
room's truth: bans, revocation, the join secret's hash, who is present).
"""

import hashlib
import hmac
import re
from typing import Literal, get_args

import msgspec

JoinPolicy = Literal["open", "secret", "token"]
"""``open``: anyone with the room id joins (the old service). ``secret``: the
join endpoint wants the room's join secret. ``token``: only tokens minted by
the operator or the app's backend get in."""
JOIN_POLICIES: tuple[str, ...] = get_args(JoinPolicy)

MAX_IDENTITY = 128
"""Bytes (UTF-8) in an identity (the app's user id): a room keeps up to
`BANNED_KEPT` of them besides its participants', so they are bounded in bytes."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Grants(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """What a token's holder may do. A missing grant has its default, so a
    token without ``grants`` (every join token) has full rights. Unknown names
    and values of another type are refused (a token carrying them is invalid)."""

    can_publish: bool = True
    """Send ``cloudflare-session`` and ``track-state``; push local tracks."""
    can_subscribe: bool = True
    """Pull remote tracks and data channels through the Calls proxy."""
    can_send: bool = True
    """Relay messages (offers, answers, ICE candidates, custom; targeted or to all)."""
    hidden: bool = False
    """Never in a ``welcome``, never announced by ``join``/``leave``, not addressable."""
    room_admin: bool = False
    """May ``mute`` and ``remove`` others from its socket."""


FULL = Grants()
"""Every grant, nothing hidden: what a join token (and an old token) carries."""
GRANT_NAMES: tuple[str, ...] = Grants.__struct_fields__


def identity_problem(identity: str) -> str | None:
    """Why this identity cannot be used, or ``None`` when it can."""
    if not identity or len(identity.encode()) > MAX_IDENTITY or _CONTROL.search(identity):
        return f"identity must be 1 to {MAX_IDENTITY} bytes of printable text"
    return None


def secret_hash(secret: str) -> str:
    """What a room keeps of its join secret. The secrets are 256 random bits,
    so one SHA-256 is enough: nothing to guess from the hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(given: str, stored: str) -> bool:
    """Whether ``given`` is the secret whose hash is ``stored``, in constant time
    (an empty ``stored`` matches nothing, but takes as long)."""
    expected = stored or "0" * 64
    return hmac.compare_digest(secret_hash(given), expected) and bool(stored)
