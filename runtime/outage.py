"""A transient bus outage, told once per episode.

When a nats-server node dies, JetStream elects new stream leaders; for a few
seconds KV reads and writes fail with "no responders", "no response from
stream" or a 503, and connections move to the surviving nodes. That is expected
operation, not a bug: each role retries within its deadlines and answers
clients with 503s meanwhile. An `Outage` turns the many failures of such an
episode into one WARNING when it starts and one INFO when it ends, and counts
episodes and failures in the role's metrics, so that the log is not a
traceback per room per second.
"""

import asyncio
import logging
import time
from typing import Any

import nats.errors
import nats.js.errors

_TRANSIENT = (
    nats.errors.NoRespondersError,
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.FlushTimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError,
    ConnectionError,
)


def transient(error: BaseException) -> bool:
    """Whether ``error`` is the bus being unreachable for a while (try again
    later), rather than a refusal or a bug."""
    if isinstance(error, _TRANSIENT):
        return True
    return isinstance(error, nats.js.errors.APIError) and getattr(error, "code", None) == 503


class Outage:
    """Episodes of failures of one kind of operation (``what``), counted in a
    role's ``episodes`` and ``failures`` counters under the label ``operation``."""

    def __init__(
        self, log: logging.Logger, what: str, operation: str, episodes: Any, failures: Any
    ) -> None:
        self._log = log
        self._what = what
        self._episodes = episodes.labels(operation)
        self._failures = failures.labels(operation)
        self._since: float | None = None
        self._failed = 0

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException | str) -> None:
        """An operation failed for a transient reason (an error, or what it was)."""
        self._failures.inc()
        self._failed += 1
        if self._since is None:
            self._since = time.monotonic()
            self._episodes.inc()
            self._log.warning(
                "%s failing: the bus is unavailable (%s); retrying",
                self._what,
                _name(error),
            )

    def over(self) -> None:
        """An operation succeeded: the episode, if any, has ended."""
        if self._since is None:
            return
        self._log.info(
            "%s working again after %.1f s (%d failed attempts)",
            self._what,
            time.monotonic() - self._since,
            self._failed,
        )
        self._since = None
        self._failed = 0


def _name(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
