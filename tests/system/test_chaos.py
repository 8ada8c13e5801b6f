"""The nemesis as a test: a 60-second chaos run must end with every invariant
holding. Its seed is fixed (the same schedule every time); ``CHAOS_SEED`` and
``CHAOS_SECONDS`` change it, and `make chaos` draws a fresh seed for longer
runs. The report is written to ``tests/artifacts/``;
``CHAOS_SEED=<seed> make chaos`` replays a schedule. It takes about 90 s."""

import os
from pathlib import Path

import pytest

from tests.chaos.run import chaos

SECONDS = float(os.environ.get("CHAOS_SECONDS", "60"))
SEED = 18

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.timeout(SECONDS + 420),
]


async def test_random_faults_under_live_calls_break_no_guarantee(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or SEED)
    report = await chaos(tmp_path, SECONDS, seed)
    text = report.text()
    out = Path(__file__).parents[1] / "artifacts" / f"chaos-{seed}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    # The run did what it is for: faults, traffic, resumes, webhooks.
    assert sum(report.faults.values()) >= SECONDS / 10, text
    assert report.deliveries["broadcasts delivered"] > 100, text
    assert report.deliveries["webhooks accepted"] > 0, text
    assert report.violation_count == 0, text
