"""One reusable JSON encoder and one typed decoder per message family."""

from typing import Any

import msgspec

from bus_schema.commands import Command, Reply
from bus_schema.control import CloseCallsTracks, EdgeControl
from bus_schema.events import Event
from bus_schema.state import CallsSession, PartitionLease, RoomMeta, RoomState, WorkerLease
from bus_schema.status import EdgeHeartbeat, PartitionsServed

DecodeError = msgspec.DecodeError
"""Raised by every decoder here for malformed or wrongly shaped input."""

_encoder = msgspec.json.Encoder()

commands: msgspec.json.Decoder[Command] = msgspec.json.Decoder(Command)
replies: msgspec.json.Decoder[Reply] = msgspec.json.Decoder(Reply)
events: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)
control: msgspec.json.Decoder[EdgeControl] = msgspec.json.Decoder(EdgeControl)
room_meta = msgspec.json.Decoder(RoomMeta)
room_state = msgspec.json.Decoder(RoomState)
worker_lease = msgspec.json.Decoder(WorkerLease)
partition_lease = msgspec.json.Decoder(PartitionLease)


def encode(value: Any) -> bytes:
    """Encode any bus message or KV value to compact JSON."""
    return _encoder.encode(value)


edge_heartbeat = msgspec.json.Decoder(EdgeHeartbeat)
calls_session = msgspec.json.Decoder(CallsSession)
close_calls_tracks = msgspec.json.Decoder(CloseCallsTracks)
partitions_served = msgspec.json.Decoder(PartitionsServed)
