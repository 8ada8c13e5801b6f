"""Webhook signatures, as the Standard Webhooks specification defines them
(https://www.standardwebhooks.com), so that a receiver using its official
libraries verifies our deliveries with the same secret string.

Each POST carries three headers:

- ``webhook-id``: the event's id (``<room_id>.<room_seq>``), the same on every
  retry: receivers deduplicate on it;
- ``webhook-timestamp``: Unix seconds when this attempt was signed;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` of
  ``"<webhook-id>.<webhook-timestamp>.<body>"``, one per secret, separated by
  spaces (while a secret is rotated, receivers holding either one verify).

A secret is ``whsec_`` followed by the base64 of 24 to 64 random bytes; the
signing key is those bytes (`new_secret` makes one: ``signaling
webhook-secret``). ``WEBHOOK_SECRET`` holds one, or several separated by spaces.

A receiver recomputes the signature over the raw body, compares in constant
time, and refuses a timestamp too far from its clock (a replay).
"""

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
TOLERANCE = 300
"""Seconds a signature stays acceptable to `verify`."""
PREFIX = "whsec_"
KEY_BYTES = (24, 64)
"""The lengths a secret's key may have, in bytes (the specification's bounds)."""
NEW_KEY_BYTES = 32


class InvalidSignature(Exception):
    """Missing headers, a bad signature, or a timestamp outside the tolerance."""


class BadSecret(ValueError):
    """Not a secret in the Standard Webhooks form (the message says why, never
    what the value was)."""


def new_secret() -> str:
    """A fresh secret: ``whsec_`` and the base64 of 32 random bytes."""
    return PREFIX + base64.b64encode(secrets.token_bytes(NEW_KEY_BYTES)).decode()


def keys(value: str) -> list[bytes]:
    """The signing keys of ``WEBHOOK_SECRET``: one secret, or several separated
    by spaces (a rotation); `BadSecret` if one is not ``whsec_<base64>`` of
    24 to 64 bytes."""
    found = []
    for secret in value.split():
        if not secret.startswith(PREFIX):
            raise BadSecret(
                f"must be {PREFIX} followed by base64 (Standard Webhooks); "
                "make one with `signaling webhook-secret`"
            )
        try:
            key = base64.b64decode(secret.removeprefix(PREFIX), validate=True)
        except (binascii.Error, ValueError):
            raise BadSecret(f"is not valid base64 after {PREFIX}") from None
        low, high = KEY_BYTES
        if not low <= len(key) <= high:
            raise BadSecret(f"must decode to {low} to {high} bytes, not {len(key)}")
        found.append(key)
    if not found:
        raise BadSecret("is empty")
    return found


def signature(key: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{event_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(
    signing_keys: Sequence[bytes], event_id: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """The headers of one delivery, signed with every key."""
    timestamp = int(time.time() if now is None else now)
    return {
        ID_HEADER: event_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: " ".join(signature(k, event_id, timestamp, body) for k in signing_keys),
        "content-type": "application/json",
    }


def verify(
    secret: str,
    received: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> str:
    """Check a delivery with ``secret`` (``whsec_…``); return its event id.
    ``received``: the request headers (lower-case names)."""
    [key, *_] = keys(secret)
    event_id = received.get(ID_HEADER)
    stamp = received.get(TIMESTAMP_HEADER)
    signatures = received.get(SIGNATURE_HEADER)
    if not event_id or not stamp or not signatures:
        raise InvalidSignature("missing webhook headers")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise InvalidSignature("bad timestamp") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise InvalidSignature("timestamp outside the tolerance (a replay?)")
    expected = signature(key, event_id, timestamp, body)
    # Several space-separated signatures may be sent (key rotation): any may match.
    if not any(hmac.compare_digest(expected, given) for given in signatures.split()):
        raise InvalidSignature("signature mismatch")
    return event_id
