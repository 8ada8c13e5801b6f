"""The old client's three-participant call, run as the documented script."""

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import System

EXAMPLE = Path(__file__).parents[2] / "examples" / "old_client_call.py"
pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_old_client_script_completes_a_call(system: System) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(EXAMPLE), "--url", system.edges[0].url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("call OK")
