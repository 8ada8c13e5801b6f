"""A three-participant call driven exactly as a client of the old Worker would.

Only the old message formats are used: create a room, join it three times,
connect three WebSockets with ``?token=``, publish Calls sessions, replay them to
a newcomer, mute, exchange a targeted P2P offer/answer, and leave. Messages the
old service never sent (``welcome``) and fields it never set (``room_seq``) are
ignored, as an old client ignores them.

When the service has Cloudflare Calls configured, the sessions are created
through its proxy (``POST /cloudflare/session``) with the join token, the one
addition the proxy requires; otherwise (as with plain ``make run``) the
announced session ids are made up, as a P2P-only client would.

    .venv/bin/python examples/old_client_call.py [--url http://127.0.0.1:8787]

Exits 0 and prints "call OK" when every step behaved as the old service did.
"""

import argparse
import asyncio
import json
import secrets
from typing import Any

import httpx
import websockets

OLD_TYPES = {"join", "leave", "cloudflare-session", "track-state", "offer", "answer"}


class OldClient:
    def __init__(self, name: str, ws: Any, participant_id: str) -> None:
        self.name = name
        self.ws = ws
        self.id = participant_id

    async def next(self, kind: str) -> dict[str, Any]:
        """The next message an old client would act on; it must be of ``kind``."""
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if message.get("type") not in OLD_TYPES:
                continue  # an old client ignores types it does not know
            if message["type"] != kind:
                raise AssertionError(f"{self.name} expected {kind}, got {message}")
            return message

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))


async def calls_session(base_url: str, token: str) -> str:
    """A Calls session created through the proxy, or a made-up id without Calls."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        response = await http.post(
            "/cloudflare/session", headers={"Authorization": f"Bearer {token}"}
        )
    if response.status_code == 503:
        return f"p2p-{secrets.token_hex(8)}"
    assert response.status_code == 201, response.text
    session_id: str = response.json()["sessionId"]
    return session_id


async def call(base_url: str) -> None:
    ws_base = base_url.replace("http", "ws", 1)
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        room = (await http.post("/api/rooms", json={"name": "Old client call"})).json()
        room_id = room["room_id"]
        info = (await http.get(f"/api/rooms/{room_id}")).json()
        assert info["name"] == "Old client call" and info["maxParticipants"] == 10, info
        tokens = []
        for name in ("alice", "bob", "carol"):
            answer = await http.post(f"/api/rooms/{room_id}/join", json={"participant_name": name})
            body = answer.json()
            assert body["ice_servers"], body
            tokens.append((name, body["token"], body["participant_id"]))

    async def connect(index: int) -> OldClient:
        name, token, participant_id = tokens[index]
        ws = await websockets.connect(f"{ws_base}/ws?token={token}")
        return OldClient(name, ws, participant_id)

    sessions = [await calls_session(base_url, token) for _, token, _ in tokens]
    alice = await connect(0)
    bob = await connect(1)
    joined = await alice.next("join")
    assert joined["data"] == {"participant_id": bob.id, "participant_name": "bob"}, joined

    alice_tracks = [{"trackName": "alice-video", "kind": "video"}]
    await alice.send(
        {
            "type": "cloudflare-session",
            "roomId": room_id,
            "participantId": alice.id,
            "participantName": "alice",
            "sessionId": sessions[0],
            "tracks": alice_tracks,
        }
    )
    session = await bob.next("cloudflare-session")
    assert (session["participantId"], session["sessionId"]) == (alice.id, sessions[0])
    assert session["tracks"] == alice_tracks

    bob_tracks = [{"trackName": "bob-audio", "kind": "audio"}]
    await bob.send(
        {
            "type": "cloudflare-session",
            "roomId": room_id,
            "participantId": bob.id,
            "participantName": "bob",
            "sessionId": sessions[1],
            "tracks": bob_tracks,
        }
    )
    assert (await alice.next("cloudflare-session"))["sessionId"] == sessions[1]

    carol = await connect(2)
    replayed = {(await carol.next("cloudflare-session"))["participantId"] for _ in range(2)}
    assert replayed == {alice.id, bob.id}, replayed
    for member in (alice, bob):
        assert (await member.next("join"))["data"]["participant_id"] == carol.id

    await bob.send({"type": "track-state", "from": bob.id, "kind": "audio", "enabled": False})
    for member in (alice, carol):
        state = await member.next("track-state")
        assert (state["from"], state["kind"], state["enabled"]) == (bob.id, "audio", False)

    await carol.send({"type": "offer", "from": carol.id, "to": alice.id, "sdp": "v=0 offer"})
    offer = await alice.next("offer")
    assert (offer["from"], offer["sdp"]) == (carol.id, "v=0 offer"), offer
    await alice.send({"type": "answer", "from": alice.id, "to": carol.id, "sdp": "v=0 answer"})
    answer = await carol.next("answer")
    assert (answer["from"], answer["sdp"]) == (alice.id, "v=0 answer"), answer

    await bob.ws.close()
    for member in (alice, carol):
        assert (await member.next("leave"))["data"] == {"participant_id": bob.id}
    await alice.ws.close()
    assert (await carol.next("leave"))["data"] == {"participant_id": alice.id}
    await carol.ws.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8787", help="an edge's base URL")
    args = parser.parse_args()
    asyncio.run(call(args.url))
    print("call OK")


if __name__ == "__main__":
    main()
