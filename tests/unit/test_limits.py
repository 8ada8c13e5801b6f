"""edge.limits: the token buckets, and the byte limits' settings."""

import pytest

from edge.limits import ConnectionLimits, TokenBucket
from edge.settings import EdgeSettings
from runtime.config import ConfigError

SECRET = "x" * 40


def test_a_bucket_spends_and_regains_bytes() -> None:
    bucket = TokenBucket(rate=1000.0, burst=10_000.0, stamp=0.0)
    assert bucket.take(0.0, cost=6000)
    assert not bucket.take(0.0, cost=6000)  # 4000 left: refused, nothing spent
    assert bucket.take(0.0, cost=4000)
    assert not bucket.take(1.0, cost=1001)  # one second regains 1000
    assert bucket.take(1.0, cost=1000)
    assert bucket.take(100.0, cost=10_000)  # never more than the burst saved up
    assert not bucket.take(100.0, cost=1)


def test_a_bucket_counts_messages_by_default() -> None:
    bucket = TokenBucket(rate=1.0, burst=2.0, stamp=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]


def test_a_connection_has_a_byte_budget_besides_its_message_budget() -> None:
    settings = EdgeSettings.from_env(
        {"JWT_SECRET": SECRET, "RATE_LIMIT_BYTES": "1024", "RATE_LIMIT_BYTES_BURST": "65536"}
    )
    limits = ConnectionLimits(settings)
    assert limits.allow_message()
    assert limits.allow_bytes(40_000)
    assert not limits.allow_bytes(40_000)  # 25,536 left (and at most ~1 KiB/s more)
    assert limits.allow_message()  # the message budget is its own
    assert limits.allow_bytes(20_000)


def test_byte_limit_defaults_leave_room_for_a_call() -> None:
    settings = EdgeSettings.from_env({"JWT_SECRET": SECRET})
    assert settings.max_broadcast_bytes == 16 * 1024 < settings.max_frame_bytes == 64 * 1024
    assert settings.bytes_per_second == 64 * 1024
    assert settings.bytes_burst == 512 * 1024


def test_byte_limits_follow_the_frame_size() -> None:
    small = EdgeSettings.from_env({"JWT_SECRET": SECRET, "MAX_FRAME_BYTES": "4096"})
    assert small.max_broadcast_bytes == 4096
    big = EdgeSettings.from_env({"JWT_SECRET": SECRET, "MAX_FRAME_BYTES": str(1 << 20)})
    assert big.bytes_burst == 1 << 20  # a frame the burst cannot hold could never be sent


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MAX_BROADCAST_BYTES": "70000"}, "MAX_BROADCAST_BYTES"),
        ({"RATE_LIMIT_BYTES_BURST": "1000"}, "RATE_LIMIT_BYTES_BURST"),
        ({"RATE_LIMIT_BYTES": "10"}, "RATE_LIMIT_BYTES"),
    ],
)
def test_byte_limits_are_bounded(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        EdgeSettings.from_env({"JWT_SECRET": SECRET, **env})
