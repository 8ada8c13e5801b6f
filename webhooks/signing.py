"""Webhook signatures, in the shape of the Standard Webhooks specification.

Each POST carries three headers:

- ``webhook-id``: the event's id (``<room_id>.<room_seq>``), the same on every
  retry: receivers deduplicate on it;
- ``webhook-timestamp``: Unix seconds when this attempt was signed;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` of
  ``"<webhook-id>.<webhook-timestamp>.<body>"``, keyed with the UTF-8 bytes of
  ``WEBHOOK_SECRET``.

A receiver recomputes the signature over the raw body, compares in constant
time, and refuses a timestamp too far from its clock (a replay).
"""

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
TOLERANCE = 300
"""Seconds a signature stays acceptable to `verify`."""


class InvalidSignature(Exception):
    """Missing headers, a bad signature, or a timestamp outside the tolerance."""


def signature(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{event_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, event_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {
        ID_HEADER: event_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, event_id, timestamp, body),
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
    """Check a delivery; return its event id. ``received``: the request headers
    (lower-case names)."""
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
    expected = signature(secret, event_id, timestamp, body)
    # Several space-separated signatures may be sent (key rotation): any may match.
    if not any(hmac.compare_digest(expected, given) for given in signatures.split()):
        raise InvalidSignature("signature mismatch")
    return event_id
