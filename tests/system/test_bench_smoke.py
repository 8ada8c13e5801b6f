"""The benchmark harness works (tiny sizes; no timing is asserted)."""

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from bench.run import start_floor
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
