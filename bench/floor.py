"""The floor: the least a WebSocket relay can do with the same server stack.

One process, Litestar on uvicorn with the edge's options, rooms in a dict, no
NATS, no authentication, no persistence. Each frame is decoded, stamped with
``from`` and a per-room ``room_seq``, encoded once and queued to every other
socket of the room (one writer task per socket, as the edge does). Benchmarks
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
    members[pid] = queue
    sequence = _sequences.setdefault(room, itertools.count(1))
    queue.put_nowait('{"type":"welcome"}')

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
            message["room_seq"] = next(sequence)
            text = _encoder.encode(message).decode()
            for other, other_queue in members.items():
                if other != pid:
                    other_queue.put_nowait(text)
    finally:
        writer.cancel()
        members.pop(pid, None)


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
