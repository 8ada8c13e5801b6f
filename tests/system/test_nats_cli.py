"""Every `nats` CLI recipe of docs/operations.md (and the event log's in
docs/admin.md), run as written with the stock CLI (v0.5.0, installed by
``scripts/install-nats-cli``) against ``signaling dev``, through the context
it saves: each must run and print what the recipe promises, readable JSON where
it reads a value. A recipe the CLI cannot run fails here.

Placeholders (``<room_id>`` …) are filled in from a live call: two participants
in a room, one Calls session through the proxy. Commands that run until
stopped (``nats sub``, ``nats kv watch``, the paging ``nats stream view``) are
stopped once they have printed what is expected."""

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from bus_schema import subjects
from tests.harness import JWT_SECRET, Api, Member, enter, free_port

ROOT = Path(__file__).parents[2]
CLI_VERSION = "v0.5.0"
CONTEXT = "signaling-dev"
SECRET = "whsec_d2ViaG9vay1zZWNyZXQtZm9yLXRlc3RzLTAxMjM0NTY="


def cli() -> str | None:
    """The stock CLI at the tested version: ``.tools/bin/nats``, else on PATH."""
    for candidate in (ROOT / ".tools" / "bin" / "nats", shutil.which("nats")):
        if candidate is None or not Path(candidate).exists():
            continue
        version = subprocess.run(
            [str(candidate), "--version"], capture_output=True, text=True, check=False
        )
        if version.stdout.strip() == CLI_VERSION:
            return str(candidate)
    return None


NATS = cli()
pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        NATS is None,
        reason=f"the stock nats CLI {CLI_VERSION} is not installed: run scripts/install-nats-cli "
        "(it needs Go)",
    ),
]


def recipes() -> list[str]:
    """Every command of the operations guide's recipes table, and of the event
    log's block in the admin guide, as written."""
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text.split("## `nats` CLI recipes", 1)[1].split("\n## ", 1)[0]
    commands = []
    for row in table.splitlines():
        if not row.startswith("| ") or row.startswith("| to …") or row.startswith("| ---"):
            continue
        cell = row.split(" | ", 1)[1]
        for code in re.findall(r"`([^`]+)`", cell.replace("\\|", "|")):
            if code.startswith(("nats ", "for r in")):
                commands.append(code)
    admin = (ROOT / "docs" / "admin.md").read_text()
    block = admin.split("Read it with the stock CLI", 1)[1].split("```sh\n", 1)[1].split("```")[0]
    for line in block.splitlines():
        command = line.split("  #", 1)[0].strip()
        if command.startswith("nats "):
            commands.append(command)
    return commands


@dataclass
class Live:
    """``signaling dev`` with a call going on, and what the recipes' placeholders are."""

    env: dict[str, str]
    url: str
    members: list[Member] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)

    def fill(self, command: str) -> str:
        for name, value in self.values.items():
            command = command.replace(f"<{name}>", value)
        assert "<" not in command.replace("<=", ""), f"a placeholder is left: {command}"
        return command


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    assert NATS is not None
    root = tmp_path_factory.mktemp("nats-cli")
    port, nats_port = free_port(), free_port()
    env = {
        **os.environ,
        "JWT_SECRET": JWT_SECRET,
        "WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/hooks",  # nobody answers: retried
        "WEBHOOK_SECRET": SECRET,
        "XDG_CONFIG_HOME": str(root / "config"),  # where the context is saved
        "PATH": f"{Path(NATS).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    process = start_dev(env, port, nats_port, root / "data")
    try:
        lines: list[str] = []
        ready = threading.Event()
        # Its output is read to the end (a full pipe would stop it).
        threading.Thread(target=read_output, args=(process, lines, ready), daemon=True).start()
        assert await asyncio.to_thread(ready.wait, 60), "signaling dev:\n" + "".join(lines)
        assert f"nats --context {CONTEXT}" in "".join(lines)
        saved = root / "config" / "nats" / "context" / f"{CONTEXT}.json"
        assert saved.stat().st_mode & 0o077 == 0  # it holds the admin password
        live = Live({**env, "NATS_CONTEXT": CONTEXT}, f"http://127.0.0.1:{port}")
        await _call(live)
        yield live
        for member in live.members:
            await member.client.close()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_dev(env: dict[str, str], port: int, nats_port: int, data: Path) -> Any:
    return subprocess.Popen(
        [
            sys.executable, "-m", "signaling", "dev", "--port", str(port),
            "--nats-port", str(nats_port), "--data-dir", str(data), "--fake-calls",
        ],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def read_output(process: Any, lines: list[str], ready: threading.Event) -> None:
    with process.stdout:
        for line in process.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                ready.set()


async def _call(live: Live) -> None:
    """Two participants in a room, a Calls session through the proxy; the
    placeholders' values, read through the CLI's own JSON where it has them."""
    api = Api(live.url)
    try:
        room_id = await api.create_room("cli")
        ws_url = live.url.replace("http", "ws", 1) + "/ws"
        live.members = [await enter(api, ws_url, room_id, name) for name in ("Ann", "Ben")]
    finally:
        await api.close()
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        created = await http.post(
            "/cloudflare/session", headers={"Authorization": f"Bearer {live.members[0].token}"}
        )
    assert created.status_code == 201, created.text
    services = json.loads((await run(live, "nats micro ls --json")).stdout)
    instances = {s["name"]: s["metadata"]["instance"] for s in services}
    partition = subjects.partition_of(room_id)
    live.values = {
        "room_id": room_id,
        "participant_id": live.members[1].participant_id,
        "session_id": created.json()["sessionId"],
        "edge_id": instances["signaling-edge"],
        "worker_id": instances["signaling-actors"],
        "dispatcher_id": instances["signaling-webhooks"],
        "n": str(partition),
    }


@dataclass
class Ran:
    stdout: str
    code: int | None


async def run(
    live: Live,
    command: str,
    *,
    until: Callable[[str], bool] | None = None,
    poke: Callable[[], Any] | None = None,
    terminal: bool = False,
    timeout: float = 20.0,
) -> Ran:
    """``command`` in bash, as an operator types it. With ``until``, a command
    that runs until stopped: stopped once its output satisfies ``until``
    (``poke`` is called meanwhile, to make something happen)."""
    if terminal:  # what pages needs a terminal: `script` gives it one; "n" ends it
        command = f"printf 'n\\n' | script -qec {shlex.quote(command)} /dev/null"
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", command, env=live.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    output = ""
    try:
        async with asyncio.timeout(timeout):
            while True:
                if until is not None and until(output):
                    return Ran(output, None)
                if poke is not None:
                    await poke()
                try:
                    chunk = await asyncio.wait_for(process.stdout.read(4096), 0.5)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                output += chunk.decode(errors="replace")
            return Ran(output, await process.wait())
    except TimeoutError:
        raise AssertionError(f"{command!r} printed, before its time was up:\n{output}") from None
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            await process.wait()


def json_in(output: str) -> list[Any]:
    """Every JSON object printed on a line of its own."""
    found = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
    return found


async def test_every_recipe_runs_and_prints_what_it_promises(live: Live) -> None:
    room_id = live.values["room_id"]
    ann, ben = live.members
    checked: list[str] = []

    async def chat() -> None:
        await ann.send({"type": "chat", "text": "hello from the recipes"})

    muted = False

    async def mute() -> None:  # a state change: the log gets an entry
        nonlocal muted
        muted = not muted
        await ben.send({"type": "track-state", "kind": "audio", "enabled": not muted})

    for recipe in recipes():
        command = live.fill(recipe)
        argv = recipe.split()
        streaming = argv[1] == "sub" or argv[1:3] == ["kv", "watch"]
        paging = argv[1:3] == ["stream", "view"]
        ran: Ran
        if streaming:
            if "signal.room." in command:
                ran = await run(
                    live, command, until=lambda out: '"seq"' in out and "hello" in out, poke=chat
                )
                events = json_in(ran.stdout)
                assert any(e.get("room_id") == room_id and "seq" in e for e in events), ran.stdout
            elif ".hb" in command:
                ran = await run(live, command, until=lambda out: bool(json_in(out)))
                assert json_in(ran.stdout)[0]["edge_id"] == live.values["edge_id"]
            elif "signal.log." in command:
                ran = await run(live, command, until=lambda out: bool(json_in(out)), poke=mute)
                assert json_in(ran.stdout)[0]["room_id"] == room_id, ran.stdout
            elif "actors.served" in command:
                # A takeover is not made here: the subscription must at least be allowed.
                ran = await run(live, command, until=lambda out: "Subscribing on" in out)
            else:  # kv watch: the current values first
                ran = await run(live, command, until=lambda out: "partition." in out)
        elif paging:
            ran = await run(
                live,
                command,
                terminal=True,
                until=lambda out: "Next Page" in out or "end of data" in out,
            )
        else:
            ran = await run(live, command)
            assert ran.code == 0, f"{command}:\n{ran.stdout}"
        assert "error" not in ran.stdout.lower().replace("errors", ""), f"{command}:\n{ran.stdout}"
        checked.append(recipe)
        expect(recipe, ran.stdout, live)
    assert len(checked) >= 25, checked


def expect(recipe: str, out: str, live: Live) -> None:
    """What a recipe promises, beyond running."""
    values = live.values
    room_id = values["room_id"]
    pids = {m.participant_id for m in live.members}
    if recipe == "nats micro ls":
        for service in ("signaling-edge", "signaling-actors", "signaling-webhooks"):
            assert service in out, out
    elif recipe == "nats micro info signaling-actors":
        assert subjects.ROOM_OWNER in out, out
        assert f"partition-{values['n']}" in out, out
    elif recipe.startswith("nats micro info "):
        assert "status" in out, out
    elif recipe.startswith("nats micro stats"):
        assert f"partition-{values['n']}" in out, out
    elif recipe.startswith("nats req signal.edge."):
        [status] = json_in(out)
        assert status["edge_id"] == values["edge_id"], out
        assert status["connections"] == 2, out
    elif recipe.startswith("nats req signal.actors.<worker_id>"):
        [status] = json_in(out)
        assert int(values["n"]) in status["partitions"], out
    elif recipe.startswith("nats req signal.webhooks."):
        [status] = json_in(out)
        assert status["dispatcher_id"] == values["dispatcher_id"], out
    elif recipe.startswith("nats req signal.actors.owner"):
        [owner] = json_in(out)
        assert owner == {
            "room_id": room_id,
            "partition": int(values["n"]),
            "worker_id": values["worker_id"],
            "since": owner["since"],
            "alive": True,
        }, out
    elif recipe in ("nats kv ls rooms", "nats kv ls room_state"):
        assert room_id in out.split(), out
    elif recipe.startswith("nats kv get rooms"):
        [meta] = json_in(out)
        assert meta["id"] == room_id, out
        assert meta["name"] == "cli", out
    elif recipe.startswith("nats kv get room_state"):
        [state] = json_in(out)
        assert set(state["participants"]) == pids, out
    elif recipe.startswith("nats kv get actor_leases"):
        [claim] = json_in(out)
        assert claim["worker_id"] == values["worker_id"], out
    elif recipe == "nats kv ls actor_leases":
        assert f"worker.{values['worker_id']}" in out.split(), out
    elif recipe.startswith("for r in"):
        assert out.split() == [room_id], out
    elif recipe.startswith("nats kv get calls_sessions"):
        [session] = json_in(out)
        assert session["room_id"] == room_id, out
    elif recipe == "nats kv ls active_rooms":
        assert f"{values['n']}.{room_id}" in out.split(), out
    elif recipe.startswith("nats kv get active_rooms"):
        assert json_in(out), out
    elif recipe == "nats stream info SIGNALING_LOG":
        assert "signal.log.>" in out, out
    elif recipe == "nats stream view SIGNALING_LOG":
        assert "participant_joined" in out, out
