"""The roles' entry points as processes: a bad environment stops them with a
message naming the variable."""

import os
import subprocess
import sys


def test_edge_refuses_to_start_without_a_secret() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWT_SECRET")}
    result = subprocess.run(
        [sys.executable, "-m", "edge"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "JWT_SECRET must be set" in result.stderr
