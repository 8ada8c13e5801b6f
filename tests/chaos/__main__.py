"""``python -m tests.chaos`` (`make chaos`): one chaos run, its report printed
and written to ``tests/artifacts/chaos-<seed>.txt``, the processes' logs and
what each client saw kept in ``tests/artifacts/chaos-<seed>/``.
``CHAOS_SECONDS`` (default 300) and ``CHAOS_SEED`` (default: a fresh one,
printed) set it."""

import asyncio
import os
import secrets
import shutil
import sys
from pathlib import Path

from tests.chaos.run import chaos


def main() -> None:
    seconds = float(os.environ.get("CHAOS_SECONDS", "300"))
    seed = int(os.environ.get("CHAOS_SEED") or secrets.randbelow(1_000_000))
    print(f"chaos: seed {seed}, {seconds:.0f} s", flush=True)
    root = Path("tests/artifacts") / f"chaos-{seed}"
    shutil.rmtree(root, ignore_errors=True)
    report = asyncio.run(chaos(root, seconds, seed))
    text = report.text()
    print(text)
    out = Path("tests/artifacts") / f"chaos-{seed}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"\nreport: {out}")
    sys.exit(1 if report.violation_count else 0)


if __name__ == "__main__":
    main()
