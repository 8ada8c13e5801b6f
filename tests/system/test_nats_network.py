"""Someone on the NATS network: a server of their own that tries to join the
cluster through its route port, past every user permission."""

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from signaling.natsserver import NatsServer
from tests.harness import System
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]


async def route_names(node: NatsServer) -> set[str]:
    """The servers ``node`` has a route with (its /routez)."""
    async with httpx.AsyncClient() as http:
        routez = (await http.get(f"{node.monitor_url}/routez", timeout=5)).json()
    return {route.get("remote_name", "") for route in routez.get("routes") or []}


def logged(log_file: Path, text: str) -> bool:
    return log_file.exists() and text in log_file.read_text(errors="replace")


async def until_logged(log_file: Path, text: str, timeout: float = 20.0) -> None:
    """Until ``text`` appears in a server's log (how a refused route shows)."""
    await eventually(
        lambda: logged(log_file, text),
        timeout=timeout,
        message=f"{text!r} never logged in {log_file.name}",
    )


async def until_joined(system: System, name: str, timeout: float = 20.0) -> None:
    async def joined() -> bool:
        return name in await route_names(system.nodes[0])

    await eventually(joined, timeout=timeout, message=f"{name} never joined")


async def test_a_route_without_the_password_is_refused(
    make_system: Callable[..., System],
) -> None:
    system = make_system()
    system.start_cluster(3)
    stray = system.stray_node("stray")
    assert stray.log_file is not None
    await until_logged(stray.log_file, "Authorization Violation")
    for node in system.nodes:
        assert "stray" not in await route_names(node)
    wrong = system.stray_node("wrong", route_password="not-the-route-password")
    assert wrong.log_file is not None
    await until_logged(wrong.log_file, "Authorization Violation")
    for node in system.nodes:
        assert not {"stray", "wrong"} & await route_names(node)
    # The check can see a node join: one with the password does.
    system.stray_node("friend", route_password=system.route_password)
    await until_joined(system, "friend")
