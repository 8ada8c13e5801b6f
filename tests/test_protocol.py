"""edge.protocol: client frame parsing and server frame rendering."""

import json

import msgspec
import pytest

from edge import protocol

WHO = protocol.Identity(
    room_id="11111111-1111-4111-8111-111111111111",
    participant_id="aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa",
    participant_name="Ann",
)


def test_relayed_appends_room_seq_to_the_stamped_frame() -> None:
    inbound = protocol.parse('{"type":"chat","room_seq":99,"text":"hi"}', WHO)
    text = protocol.relayed(msgspec.Raw(inbound.frame), 12)
    assert json.loads(text) == {
        "type": "chat",
        "text": "hi",
        "from": WHO.participant_id,
        "room_seq": 12,
    }


def test_parse_routes() -> None:
    assert protocol.parse('{"type":"x"}', WHO).route is protocol.Route.BROADCAST
    assert protocol.parse('{"type":"x","to":"all"}', WHO).route is protocol.Route.BROADCAST
    direct = protocol.parse('{"type":"x","to":"someone"}', WHO)
    assert (direct.route, direct.to) == (protocol.Route.DIRECT, "someone")
    state = protocol.parse('{"type":"track-state","kind":"video","enabled":true}', WHO)
    assert (state.route, state.kind, state.enabled) == (protocol.Route.TRACK_STATE, "video", True)


def test_parse_accepts_binary_frames() -> None:
    assert protocol.parse(b'{"type":"x"}', WHO).route is protocol.Route.BROADCAST


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"cloudflare-session","sessionId":"","tracks":[]}',
        '{"type":"cloudflare-session","sessionId":"s","tracks":"no"}',
        '{"type":"' + "x" * 300 + '"}',
    ],
)
def test_parse_rejects(frame: str) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.parse(frame, WHO)
