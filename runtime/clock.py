"""The one clock of the service: ISO 8601 in UTC with milliseconds, as
JavaScript's ``toISOString`` writes it (what the old service stored), together
with Unix seconds for deadlines."""

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Clock:
    """A moment, as ISO 8601 (for people and the wire) and Unix seconds (for deadlines)."""

    iso: str
    epoch: float


_second: tuple[int, str] = (-1, "")
"""The last whole second formatted, and its text (formatting is the slow part)."""


def now() -> Clock:
    global _second
    epoch = time.time()
    second = int(epoch)
    if second != _second[0]:
        _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return Clock(iso=f"{_second[1]}.{int((epoch - second) * 1000):03d}Z", epoch=epoch)


def iso_now() -> str:
    """Now as ISO 8601, e.g. ``2026-11-29T22:11:46.727Z``."""
    return now().iso


def iso_at(epoch: float) -> str:
    """A Unix time as ISO 8601 in UTC with milliseconds."""
    second = int(epoch)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{text}.{int((epoch - second) * 1000):03d}Z"
