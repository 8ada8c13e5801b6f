"""JetStream streams and KV buckets: bringing their limits to the settings, and
listing a bucket's keys without the client's watcher race.

Both the actors (KV buckets, the event log) and the webhook dispatchers (the
dead-letter stream) create what they need on start; an existing stream keeps
its other settings but its limits follow the process's settings, so a changed
``LOG_MAX_BYTES``, ``KV_MAX_BYTES`` or ``WEBHOOK_DEAD_MAX_BYTES`` applies at the
next start.
"""

import dataclasses
import json
import logging
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js.api import DEFAULT_PREFIX, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NotFoundError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0
"""Seconds to wait for one JetStream API answer."""
LIMITS = ("max_age", "max_bytes", "discard")
"""The fields of a stream's configuration that `ensure_stream` keeps in step."""


def kv_stream(bucket: str) -> str:
    """The name of the stream behind a KV bucket."""
    return f"KV_{bucket}"


async def ensure_limits(js: JetStreamContext, stream: str, **limits: Any) -> None:
    """Bring an existing stream's limits (``max_age=``, ``max_bytes=``, ...) to
    the given values; the rest of its configuration stays as it is. Raises
    ``NotFoundError`` when the stream does not exist.

    Lowering ``max_bytes`` below what a stream holds is allowed: with discard
    ``old`` the oldest messages go, with discard ``new`` (KV buckets) nothing is
    removed and writes are refused until it shrinks."""
    current = (await js.stream_info(stream)).config
    changes = {
        name: value
        for name, value in limits.items()
        if value is not None and not _same(getattr(current, name), value)
    }
    if changes:
        log.info("stream %s: %s", stream, ", ".join(f"{k} -> {v}" for k, v in changes.items()))
        await js.update_stream(dataclasses.replace(current, **changes))


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create ``config``'s stream, or bring an existing one's `LIMITS` to it."""
    assert config.name is not None
    try:
        await ensure_limits(js, config.name, **{name: getattr(config, name) for name in LIMITS})
    except NotFoundError:
        await js.add_stream(config)


def _same(current: object, wanted: object) -> bool:
    if isinstance(current, float) or isinstance(wanted, float):
        # Durations travel in nanoseconds; seconds come back as floats.
        return current is not None and abs(float(current) - float(wanted)) < 0.001  # type: ignore[arg-type]
    return current == wanted


class _State(msgspec.Struct):
    subjects: dict[str, int] | None = None
    num_subjects: int = 0


class _StreamInfo(msgspec.Struct):
    state: _State | None = None
    total: int = 0
    error: dict[str, Any] | None = None


_stream_info = msgspec.json.Decoder(_StreamInfo)


async def bucket_size(nc: Client, bucket: str, *, prefix: str = DEFAULT_PREFIX) -> int:
    """How many keys ``bucket`` has (delete markers included), without listing them."""
    reply = await nc.request(
        f"{prefix}.STREAM.INFO.{kv_stream(bucket)}", b"", timeout=REQUEST_TIMEOUT
    )
    info = _stream_info.decode(reply.data)
    if info.error is not None:
        APIError.from_error(info.error)
    return info.state.num_subjects if info.state else 0


async def bucket_keys(
    nc: Client, bucket: str, *, keys: str = ">", prefix: str = DEFAULT_PREFIX
) -> list[str]:
    """Every key of ``bucket`` that has a message: the live keys **and** the keys
    whose last message is a delete or purge marker (read a key to tell which).

    Why not ``KeyValue.keys()``: nats-py decides where its watcher's initial
    snapshot ends from a consumer-info reply that can overtake the messages
    already sent, and from per-message pending counts that can touch zero early
    under concurrent writes (nats-io/nats.py#842, #995), so now and then it
    returns no keys, or some, for a bucket full of them. This asks the server
    for the subjects of the bucket's stream instead: one answer, computed under
    the stream's lock, in which a concurrent write cannot hide a key (paged
    every 100,000 keys; across pages a key deleted meanwhile may shift
    another past a page boundary). ``keys``: a subject filter on the keys
    (``"3.>"``: those that start with the token ``3``)."""
    stream = kv_stream(bucket)
    pre = f"$KV.{bucket}."
    found: list[str] = []
    while True:
        request = {"subjects_filter": f"{pre}{keys}", "offset": len(found)}
        reply = await nc.request(
            f"{prefix}.STREAM.INFO.{stream}", json.dumps(request).encode(), timeout=REQUEST_TIMEOUT
        )
        info = _stream_info.decode(reply.data)
        if info.error is not None:
            APIError.from_error(info.error)  # raises the matching APIError
        subjects = (info.state.subjects if info.state else None) or {}
        found.extend(subject[len(pre) :] for subject in subjects)
        if not subjects or len(found) >= info.total:
            return found
