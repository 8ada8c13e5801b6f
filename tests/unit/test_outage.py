"""runtime.outage: a transient bus outage is logged once per episode."""

import logging

import nats.errors
import nats.js.errors
import pytest
from prometheus_client import CollectorRegistry, Counter

from runtime.outage import Outage, transient


def counters() -> tuple[Counter, Counter, CollectorRegistry]:
    registry = CollectorRegistry()
    episodes = Counter("episodes", "", ["operation"], registry=registry)
    failures = Counter("failures", "", ["operation"], registry=registry)
    return episodes, failures, registry


def test_an_episode_is_one_warning_and_one_info_however_many_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    episodes, failures, registry = counters()
    outage = Outage(logging.getLogger("t"), "room turns", "turns", episodes, failures)
    with caplog.at_level(logging.INFO, logger="t"):
        outage.over()  # nothing to end
        for _ in range(50):
            outage.failed(nats.errors.NoRespondersError())
        assert outage.ongoing
        outage.over()
        outage.over()
        outage.failed("timeout")
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels == [
        (
            "WARNING",
            "room turns failing: the bus is unavailable (NoRespondersError: "
            "nats: no responders available for request); retrying",
        ),
        ("INFO", levels[1][1]),
        ("WARNING", "room turns failing: the bus is unavailable (timeout); retrying"),
    ]
    assert "working again after" in levels[1][1]
    assert "(50 failed attempts)" in levels[1][1]
    assert all(r.exc_info is None for r in caplog.records)
    assert registry.get_sample_value("episodes_total", {"operation": "turns"}) == 2
    assert registry.get_sample_value("failures_total", {"operation": "turns"}) == 51


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (nats.errors.NoRespondersError(), True),
        (nats.errors.TimeoutError(), True),
        (nats.js.errors.NoStreamResponseError(), True),
        (
            nats.js.errors.APIError(
                code=503, description="JetStream system temporarily unavailable"
            ),
            True,
        ),
        (ConnectionResetError(), True),
        (nats.js.errors.KeyWrongLastSequenceError(), False),
        (nats.js.errors.APIError(code=400, description="bad request"), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_the_bus_being_away_is_transient(error: BaseException, expected: bool) -> None:
    assert transient(error) is expected
