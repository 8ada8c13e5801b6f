"""A ``track-state`` that changes nothing is relayed, as the old service did, but
not saved, logged or sent to webhooks: a member cannot turn a burst of repeats
into writes to KV and the event log."""

import asyncio
import json

import pytest

from bus_schema import buckets
from tests.harness import Api, System, enter
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_repeated_track_states_are_relayed_but_not_saved_or_logged(
    system: System, api: Api, ws_url: str
) -> None:
    room_id = await api.create_room("repeats")
    ann = await enter(api, ws_url, room_id, "Ann")
    ben = await enter(api, ws_url, room_id, "Ben")
    await ann.recv_type("join")
    bus = await system.bus()
    logged: asyncio.Queue[dict[str, object]] = asyncio.Queue()

    async def on_log(msg: object) -> None:
        await logged.put(json.loads(msg.data))  # type: ignore[attr-defined]

    subscription = await bus.nc.subscribe(f"signal.log.*.{room_id}.>", cb=on_log)
    kv = await bus.js.key_value(buckets.ROOM_STATE)

    await ann.send({"type": "track-state", "kind": "audio", "enabled": False})
    first = await ben.recv_type("track-state")
    entry = await asyncio.wait_for(logged.get(), 10)
    assert (entry["event"], entry["enabled"]) == ("track_state_changed", False)
    before = (await kv.get(room_id)).revision

    for _ in range(20):  # the same again and again
        await ann.send({"type": "track-state", "kind": "audio", "enabled": False})
    seqs = [(await ben.recv_type("track-state"))["room_seq"] for _ in range(20)]
    assert seqs == list(range(first["room_seq"] + 1, first["room_seq"] + 21))  # all relayed

    # A real change after them: logged next, so nothing was logged in between.
    await ann.send({"type": "track-state", "kind": "audio", "enabled": True})
    await ben.recv_type("track-state")
    entry = await asyncio.wait_for(logged.get(), 10)
    assert (entry["event"], entry["enabled"]) == ("track_state_changed", True)
    assert logged.empty()

    # The change is saved within the mute save delay (a second).
    async def saved() -> bool:
        state = await bus.room_state(room_id)
        return state is not None and state.participants[ann.participant_id].audio is True

    await eventually(saved, timeout=10, message="the mute change was never saved")
    after = (await kv.get(room_id)).revision
    # The repeats cost at most one write (a block of sequence numbers, reserved
    # once per thousand relayed messages); the change one more.
    assert after - before <= 2
    await subscription.unsubscribe()
    await bus.close()
    await ann.client.close()
    await ben.client.close()
