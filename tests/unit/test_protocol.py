"""edge.protocol: client frame parsing and server frame rendering."""

import json

import msgspec
import pytest

from bus_schema.state import Track
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
    assert isinstance(protocol.parse('{"type":"x"}', WHO), protocol.BroadcastFrame)
    assert isinstance(protocol.parse('{"type":"x","to":"all"}', WHO), protocol.BroadcastFrame)
    direct = protocol.parse('{"type":"x","to":"someone"}', WHO)
    assert isinstance(direct, protocol.DirectFrame)
    assert direct.to == "someone"
    state = protocol.parse('{"type":"track-state","kind":"video","enabled":true}', WHO)
    assert isinstance(state, protocol.TrackStateFrame)
    assert (state.kind, state.enabled) == ("video", True)
    session = protocol.parse(
        '{"type":"cloudflare-session","sessionId":"s","tracks":[{"trackName":"t"}]}', WHO
    )
    assert isinstance(session, protocol.SessionFrame)
    assert (session.session_id, session.tracks) == ("s", [Track(trackName="t")])


def test_each_route_has_its_metric_label() -> None:
    """``signaling_edge_relay_seconds{route=...}`` keeps its four label values."""
    frames = [
        '{"type":"cloudflare-session","sessionId":"s"}',
        '{"type":"track-state","kind":"audio","enabled":false}',
        '{"type":"chat"}',
        '{"type":"offer","to":"someone"}',
    ]
    routes = [protocol.route(protocol.parse(frame, WHO)) for frame in frames]
    assert routes == ["session", "track-state", "broadcast", "direct"]
    assert [protocol.parse(frame, WHO).type for frame in frames] == [
        "cloudflare-session",
        "track-state",
        "chat",
        "offer",
    ]


def test_parse_accepts_binary_frames() -> None:
    assert isinstance(protocol.parse(b'{"type":"x"}', WHO), protocol.BroadcastFrame)


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


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"track-state","kind":"audio","enabled":false,"by":"admin","room_seq":7}',
        '{"type":"chat","to":"all","by":"admin","room_seq":7}',
        '{"type":"offer","to":"someone","by":"admin","room_seq":7}',
    ],
)
def test_every_server_only_field_is_stripped(frame: str) -> None:
    """A client cannot pass its mute off as an operator's (``by``) or set ``room_seq``."""
    stamped = json.loads(protocol.parse(frame, WHO).frame)
    assert not protocol.SERVER_FIELDS & stamped.keys()
    assert stamped["from"] == WHO.participant_id


@pytest.mark.parametrize(
    "frame",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '{"type":"chat","to":"all","x":' + "[" * 100_000 + "]" * 100_000 + "}",
        b'{"type":"offer","to":"b","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["arrays", "objects", "inside-a-broadcast", "binary"],
)
def test_deep_nesting_is_a_protocol_error(frame: str | bytes) -> None:
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.parse(frame, WHO)
    assert refused.value.code == "too_deep"


def test_invalid_utf8_inside_a_string_is_invalid_json() -> None:
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.parse(b'{"type":"chat","text":"\xff"}', WHO)
    assert refused.value.code == "invalid_json"


@pytest.mark.parametrize(
    ("frame", "refused"),
    [
        ({"type": "chat", "to": "all"}, True),
        ({"type": "chat"}, True),
        ({"type": "track-state", "kind": "audio", "enabled": True}, True),
        ({"type": "cloudflare-session", "sessionId": "s", "tracks": []}, True),
        ({"type": "offer", "to": "someone"}, False),
    ],
)
def test_frames_to_the_room_have_a_smaller_size_cap(
    frame: dict[str, object], refused: bool
) -> None:
    big = json.dumps({**frame, "pad": "x" * 20_000})
    if refused:
        with pytest.raises(protocol.ProtocolError) as error:
            protocol.parse(big, WHO, max_broadcast=16_384)
        assert error.value.code == "too_large"
    else:
        assert isinstance(protocol.parse(big, WHO, max_broadcast=16_384), protocol.DirectFrame)
    assert protocol.parse(json.dumps(frame), WHO, max_broadcast=16_384)  # small: fine


# --- targeted frames from other edges ------------------------------------------------

BEN = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
STRANGER = "cccccccc-cccc-4ccc-8ccc-cccccccccccc"
MEMBERS = {WHO.participant_id, BEN}


def test_a_frame_an_edge_relays_passes_as_it_came() -> None:
    inbound = protocol.parse(
        '{"type":"offer","to":"' + BEN + '","sdp":"v=0\\r\\n","from":"forged"}', WHO
    )
    text = protocol.peer_frame(inbound.frame, BEN, MEMBERS)
    assert text == inbound.frame.decode()
    assert json.loads(text)["from"] == WHO.participant_id


def peer(**fields: object) -> bytes:
    frame: dict[str, object] = {"type": "offer", "to": BEN, "from": WHO.participant_id}
    frame.update(fields)
    return json.dumps({k: v for k, v in frame.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (peer(type="welcome", participants=[], room_seq=None), "type"),
        (peer(type="kicked", message="bye"), "type"),
        (peer(type="join"), "type"),
        (peer(type="cloudflare-session", sessionId="s"), "type"),
        (peer(type="track-state", kind="audio", enabled=False), "type"),
        (peer(type=""), "type"),
        (peer(type="x" * 300), "type"),
        (
            b'{"type":"offer","ty\\u0070e":"welcome","to":"' + BEN.encode() + b'","from":"x"}',
            "type",
        ),
        (peer(**{"from": STRANGER}), "sender"),
        (peer(**{"from": BEN}), "sender"),
        (peer(to=WHO.participant_id), "sender"),
        (peer(room_seq=3), "server_field"),
        (peer(by="admin"), "server_field"),
        (peer(type=None), "malformed"),
        (peer(**{"from": 5}), "malformed"),
        (b"[1, 2]", "malformed"),
        (b'"offer"', "malformed"),
        (b'{"type":', "malformed"),
        (peer()[:-1] + b',"x":"\xff"}', "malformed"),
        (peer()[:-1] + b',"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "malformed"),
        (peer() + b"{}", "malformed"),
    ],
    ids=[
        "welcome",
        "kicked",
        "join",
        "session",
        "track-state",
        "empty-type",
        "long-type",
        "escaped-duplicate-type",
        "non-member",
        "from-the-target",
        "to-someone-else",
        "room_seq",
        "by",
        "no-type",
        "from-not-a-string",
        "array",
        "string",
        "invalid-json",
        "invalid-utf8",
        "too-deep",
        "two-objects",
    ],
)
def test_forged_peer_frames_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(protocol.RefusedPeerFrame) as refused:
        protocol.peer_frame(data, BEN, MEMBERS)
    assert refused.value.reason == reason


def test_a_refused_upgrade_answers_the_error_alone() -> None:
    assert protocol.upgrade_refused("Missing token") == b'{"error":"Missing token"}'
