"""A room at its maximum size with every member at every cap a member has (the
longest name, the most Calls sessions, the most tracks announced): its stored
state stays well under NATS ``max_payload`` and a newcomer still gets its
``welcome``, through real processes."""

import asyncio
import json
import time
from typing import Any

import httpx
import msgspec
import pytest
import websockets

from bus_schema import buckets
from bus_schema.limits import MAX_TRACKS_BYTES
from tests.harness import (
    Api,
    System,
    calls_env,
    calls_stand_in,
)
from tests.unit.test_state_bounds import fullest_tracks

pytestmark = pytest.mark.asyncio(loop_scope="session")

MAX_PAYLOAD = 1024 * 1024
"""nats-server's default, and nats.conf's."""
SIZE = 200
"""MAX_PARTICIPANTS_LIMIT's default."""
NAME = "\U0001d538" * 100
"""The longest participant name, four bytes a character."""


def tracks_to_announce(session_id: str) -> list[dict[str, Any]]:
    """As many bytes of tracks as one participant may announce, and a field
    the room must not keep."""
    return [
        {**msgspec.structs.asdict(track), "extra": "x" * 200}  # relayed, never kept
        for track in fullest_tracks(session_id)
    ]


async def heard_sessions(ws: websockets.ClientConnection, senders: set[str]) -> None:
    """Read until a ``cloudflare-session`` from each of ``senders`` arrived."""
    waiting = set(senders)
    while waiting:
        message = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if message.get("type") == "cloudflare-session":
            waiting.discard(message["participantId"])


async def test_a_full_room_at_every_cap_stays_well_under_max_payload(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    async with calls_stand_in(rate_limit_per_second=100_000) as server:
        system = System(
            tmp_path_factory.mktemp("room-bounds"), extra_env=calls_env(server.base_url)
        )
        sockets: list[websockets.ClientConnection] = []
        started = time.monotonic()
        try:
            await system.start()
            api = Api(system.edges[0].url)
            room_id = await api.create_room("full", max_participants=SIZE)
            limits = httpx.Limits(max_connections=20)
            async with httpx.AsyncClient(
                base_url=system.edges[0].url, timeout=60, limits=limits
            ) as http:
                members = [await api.join(room_id, NAME) for _ in range(SIZE - 1)]

                async def sessions_of(member: dict[str, Any]) -> list[str]:
                    """Create Calls sessions until refused (before connecting, as old clients)."""
                    made: list[str] = []
                    auth = {"Authorization": f"Bearer {member['token']}"}
                    while True:
                        response = await http.post("/cloudflare/session", headers=auth)
                        if response.status_code != 201:
                            assert response.status_code == 409, response.text
                            assert response.json()["code"] == "calls_session_limit"
                            return made
                        made.append(response.json()["sessionId"])

                # Everyone gets one session first, then they take the rest in turns.
                owned: list[list[str]] = [[] for _ in members]
                for index, member in enumerate(members):
                    auth = {"Authorization": f"Bearer {member['token']}"}
                    created = await http.post("/cloudflare/session", headers=auth)
                    assert created.status_code == 201, created.text
                    owned[index].append(created.json()["sessionId"])
                more = await asyncio.gather(*(sessions_of(m) for m in members[:60]))
                for index, extra in enumerate(more):
                    owned[index].extend(extra)
            assert sum(len(o) for o in owned) == 400  # CALLS_SESSIONS_PER_ROOM
            assert max(len(o) for o in owned) == 8  # CALLS_SESSIONS_PER_PARTICIPANT

            for index, member in enumerate(members):
                ws = await websockets.connect(
                    f"{system.edges[0].ws_url}?token={member['token']}",
                    max_queue=None,
                    open_timeout=30,
                )
                sockets.append(ws)
                welcome = json.loads(await asyncio.wait_for(ws.recv(), 30))
                assert welcome["type"] == "welcome"
                tracks = tracks_to_announce(owned[index][0])
                await ws.send(
                    json.dumps(
                        {
                            "type": "cloudflare-session",
                            "sessionId": owned[index][0],
                            "tracks": tracks,
                        }
                    )
                )

            # Every announcement applied: the first member hears all the others,
            # the second hears the first (events go out after the state is saved).
            await heard_sessions(sockets[0], {m["participant_id"] for m in members[1:]})
            await heard_sessions(sockets[1], {members[0]["participant_id"]})
            bus = await system.bus()
            kv = await bus.js.key_value(buckets.ROOM_STATE)
            entry = await kv.get(room_id)
            assert entry.value is not None
            stored = len(entry.value)
            state = json.loads(entry.value)
            assert sum(1 for p in state["participants"].values() if p.get("session_id")) == SIZE - 1

            # The newcomer: its whole welcome and the old-format replays arrive.
            newcomer = await api.join(room_id, "Newcomer")
            ws = await websockets.connect(
                f"{system.edges[0].ws_url}?token={newcomer['token']}",
                max_queue=None,
                open_timeout=30,
            )
            sockets.append(ws)
            first: list[str] = []
            welcome_text = await asyncio.wait_for(ws.recv(), 30)
            assert isinstance(welcome_text, str)
            welcome = json.loads(welcome_text)
            assert welcome["type"] == "welcome"
            assert len(welcome["participants"]) == SIZE
            for _ in range(SIZE - 1):
                text = await asyncio.wait_for(ws.recv(), 30)
                assert isinstance(text, str)
                first.append(text)
            replays = [json.loads(text) for text in first]
            assert {r["type"] for r in replays} == {"cloudflare-session"}
            announced = [p for p in welcome["participants"] if p.get("session")]
            assert len(announced) == SIZE - 1
            assert all("extra" not in t for p in announced for t in p["tracks"])  # not kept
            assert all(
                sum(len(json.dumps(t, ensure_ascii=False).encode()) for t in p["tracks"])
                <= MAX_TRACKS_BYTES + 64
                for p in announced
            )
            first_output = sum(len(text.encode()) for text in [welcome_text, *first])
            # Still connected and served: a message from the newcomer reaches the room.
            await ws.send(json.dumps({"type": "hello", "to": "all"}))
            heard = json.loads(await asyncio.wait_for(sockets[0].recv(), 30))
            while heard.get("type") != "hello":
                heard = json.loads(await asyncio.wait_for(sockets[0].recv(), 30))
            assert heard["from"] == newcomer["participant_id"]
            await bus.close()
            await api.close()
            print(
                f"stored state {stored} B ({stored / MAX_PAYLOAD:.0%} of max_payload), "
                f"newcomer's first output {first_output} B, {time.monotonic() - started:.1f} s"
            )
            assert stored < 0.6 * MAX_PAYLOAD
        finally:
            for ws in sockets:
                await ws.close()
            system.stop()
