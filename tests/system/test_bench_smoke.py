"""The benchmark harness works (tiny sizes; no timing is asserted)."""

import asyncio
import json
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from bench.run import MESSAGES, cpu_args, start_floor
from bench.traffic import Traffic, deliveries_per_message
from tests.harness import System

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def loadgen(*args: str) -> dict[str, Any]:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bench.loadgen", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


async def test_every_scenario_runs_against_ours_and_the_floor(
    make_system: Callable[..., System],
) -> None:
    system = make_system()
    await system.start(edges=2)
    http = ",".join(e.url for e in system.edges)
    floor, floor_url = await asyncio.to_thread(start_floor)
    try:
        tiny = ["--rooms", "2", "--size", "3", "--rate", "50", "--duration", "0.5"]
        for target in (
            ["--target", "ours", "--http", http],
            ["--target", "floor", "--ws", floor_url],
        ):
            relay = await loadgen("relay", *target, *tiny)
            assert relay["received"] == relay["expected"] > 0
            fanout = await loadgen(
                "fanout", *target, "--size", "4", "--duration", "0.5", "--steps", "100"
            )
            assert fanout["steps"][0]["delivered"] == fanout["steps"][0]["expected"] > 0
        joins = await loadgen("joins", "--http", http, "--count", "6", "--rooms", "2")
        assert (joins["join_to_welcome_ms"]["n"], joins["errors"]) == (6, 0)
        capacity = await loadgen(
            "capacity", "--http", system.edges[0].url, "--count", "10", "--size", "5",
            "--hold", "0", "--edge-pid", str(system.edges[0].pid),
        )  # fmt: skip
        assert capacity["alive_after_hold"] == capacity["connections"] == 10
    finally:
        floor.terminate()
        floor.wait()


async def test_real_messages_are_relayed_and_costed_by_ours_and_the_floor(
    make_system: Callable[..., System],
) -> None:
    """Each kind of the real-messages section (track-state toggles, sessions,
    call set-up bursts, the mix, the custom broadcast) is delivered in full by
    both targets, with the CPU of every role reported per message."""
    system = make_system()
    await system.start(edges=2)
    http = ",".join(e.url for e in system.edges)
    floor, floor_url = await asyncio.to_thread(start_floor)
    tiny = ["--rooms", "2", "--size", "3", "--rate", "100", "--duration", "0.5", "--warmup", "0.2"]
    try:
        for message in MESSAGES:
            ours, base = await asyncio.gather(
                loadgen(
                    "relay", "--target", "ours", "--http", http, "--message", message, *tiny,
                    *cpu_args(system),
                ),
                loadgen(
                    "relay", "--target", "floor", "--ws", floor_url, "--message", message, *tiny,
                    "--cpu", f"floor={floor.pid}",
                ),
            )  # fmt: skip
            for row in (ours, base):
                fanout = 1 if message == "offer" else 2  # one peer, or the room's two others
                if message != "mix":
                    assert row["expected"] == row["sent"] * fanout > 0, (message, row)
                assert (row["received"], row["errors"]) == (row["expected"], 0), (message, row)
            used = ours["cpu_seconds"]
            assert used["total"] == pytest.approx(used["edges"] + used["actors"] + used["nats"])
            assert base["cpu_seconds"]["total"] == pytest.approx(base["cpu_seconds"]["floor"])
            assert sorted(ours["cpu_us_per_message"]) == sorted(used)
            assert sorted(used) == ["actors", "edges", "loadgen", "nats", "total"]
    finally:
        floor.terminate()
        floor.wait()


class _Recorder:
    """Stands in for a `BenchClient` of a room: remembers what it was asked to send."""

    def __init__(self, participant_id: str, room: list[str]) -> None:
        self.participant_id = participant_id
        self.peers = set(room) - {participant_id}
        self.sent: list[dict[str, Any]] = []

    def send(self, payload: bytes) -> None:
        self.sent.append(json.loads(payload))


async def test_the_mix_sends_the_documented_proportions() -> None:
    """Per 90 messages: 63 track-state toggles, 9 cloudflare-session (a 32-hex
    session id, two tracks), one call set-up burst of 18 targeted frames to a
    peer of the room; every frame carries ``ts``; deliveries per message as
    `deliveries_per_message` says."""
    ids = [[str(uuid.uuid4()) for _ in range(5)] for _ in range(2)]
    rooms = [[_Recorder(pid, room) for pid in room] for room in ids]
    traffic = Traffic("mix", rooms)  # type: ignore[arg-type]
    messages = deliveries = 0
    while messages < 900:
        sent, due = traffic.send_next()
        messages, deliveries = messages + sent, deliveries + due
    assert (messages, deliveries / messages) == (900, deliveries_per_message("mix", 5))
    frames = [(c, f) for room in rooms for c in room for f in c.sent]
    assert all(isinstance(f["ts"], int) for _, f in frames)
    kinds = Counter(f["type"] for _, f in frames)
    assert kinds == {
        "track-state": 630,
        "cloudflare-session": 90,
        "offer": 10,
        "answer": 10,
        "ice-candidate": 160,
    }
    for client, frame in frames:
        if frame["type"] == "cloudflare-session":
            assert re.fullmatch("[0-9a-f]{32}", frame["sessionId"])
            assert [t["kind"] for t in frame["tracks"]] == ["audio", "video"]
        elif frame["type"] != "track-state":
            assert frame["to"] in client.peers
    for client in (c for room in rooms for c in room):
        toggles = [f["enabled"] for f in client.sent if f["type"] == "track-state"]
        assert toggles == [n % 2 == 0 for n in range(len(toggles))]  # true, false, true...
