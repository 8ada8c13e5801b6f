"""The floor: the least a WebSocket relay can do with the same server stack.

One process, Litestar on uvicorn with the edge's options, rooms in a dict, no
NATS, no authentication, no persistence. Each frame is decoded, stamped with
``from`` and a per-room ``room_seq``, encoded once and queued to every other
socket of the room (one writer task per socket, as the edge does); a frame whose
``to`` names one participant goes to that socket only, unnumbered. A newcomer
gets a ``welcome`` naming itself and the room's members, the others a ``join``
(and a ``leave`` when it goes), so clients learn whom to address. Benchmarks
run the same scenarios against it and report our figures beside its own.

    .venv/bin/python -m bench.floor --port 8799
    ws://127.0.0.1:8799/ws?room=<room>&pid=<participant>
"""

import argparse
import asyncio
import itertools
from typing import Any

import msgspec
import uvicorn
from litestar import Litestar, WebSocket, websocket

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_rooms: dict[str, dict[str, asyncio.Queue[str]]] = {}
_sequences: dict[str, "itertools.count[int]"] = {}


@websocket("/ws")
async def relay(socket: WebSocket[Any, Any, Any]) -> None:
    room = socket.query_params.get("room", "r")
    pid = socket.query_params.get("pid", "p")
    await socket.accept()
    queue: asyncio.Queue[str] = asyncio.Queue()
    members = _rooms.setdefault(room, {})
    sequence = _sequences.setdefault(room, itertools.count(1))
    welcome = {
        "type": "welcome",
        "participant_id": pid,
        "participants": [{"id": p} for p in members],
    }
    queue.put_nowait(_encoder.encode(welcome).decode())
    _to_others(
        members, pid, {"type": "join", "from": pid, "to": "all", "data": {"participant_id": pid}}
    )
    members[pid] = queue

    async def write() -> None:
        while True:
            await socket.send({"type": "websocket.send", "text": await queue.get(), "bytes": None})

    writer = asyncio.create_task(write())
    try:
        while True:
            event = await socket.receive()
            if event["type"] != "websocket.receive":
                break
            message = _decoder.decode(event.get("text") or event.get("bytes") or b"{}")
            if not isinstance(message, dict):
                continue
            message["from"] = pid
            to = message.get("to", "all")
            if to == "all":
                message["room_seq"] = next(sequence)
                _to_others(members, pid, message)
            elif (peer := members.get(to)) is not None:  # targeted: not numbered
                peer.put_nowait(_encoder.encode(message).decode())
            else:
                queue.put_nowait('{"type":"error","code":"unknown_participant"}')
    finally:
        writer.cancel()
        members.pop(pid, None)
        _to_others(
            members,
            pid,
            {"type": "leave", "from": pid, "to": "all", "data": {"participant_id": pid}},
        )


def _to_others(members: dict[str, asyncio.Queue[str]], pid: str, message: dict[str, Any]) -> None:
    """Encode once, queue to every other socket of the room."""
    text = _encoder.encode(message).decode()
    for other, other_queue in members.items():
        if other != pid:
            other_queue.put_nowait(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8799)
    args = parser.parse_args()
    uvicorn.Server(
        uvicorn.Config(
            Litestar([relay], logging_config=None, openapi_config=None),
            host="127.0.0.1",
            port=args.port,
            ws="websockets-sansio",
            ws_per_message_deflate=False,
            http="httptools",
            loop="uvloop",
            log_config=None,
            access_log=False,
        )
    ).run()


if __name__ == "__main__":
    main()
