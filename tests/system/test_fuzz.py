"""Property-based fuzzing of a running edge: random and mutated WebSocket frames
and HTTP bodies. Never a 5xx for a client error, never a dead connection for a
recoverable error, never a state change from invalid input, and the connection
still works for a valid message afterwards."""

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import Api, Member, System, enter

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN_KEY = "fuzz-admin-key-0123456789abcdef"
DEEP = 100_000

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
VALID = [
    {"type": "track-state", "kind": "audio", "enabled": True},
    {
        "type": "cloudflare-session",
        "sessionId": "s1",
        "tracks": [{"trackName": "t", "kind": "audio"}],
    },
    {"type": "chat", "to": "all", "text": "hi"},
]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid message with one field removed, retyped or replaced."""
    message = dict(draw(st.sampled_from(VALID)))
    key = draw(st.sampled_from(sorted(message)))
    action = draw(st.sampled_from(["drop", "retype"]))
    if action == "drop":
        del message[key]
    else:
        message[key] = draw(json_values)
    return json.dumps(message)


@st.composite
def invalid_frames(draw: st.DrawFn) -> str | bytes:
    """Frames the protocol must refuse, whatever their details."""
    kind = draw(st.sampled_from(["text", "bytes", "scalar", "no-type", "reserved", "shape", "to"]))
    if kind == "text":
        text = draw(st.text(min_size=1, max_size=200))
        try:
            json.loads(text)
        except ValueError:
            return text
        return "{" + text  # make sure it is not JSON
    if kind == "bytes":
        return b"\xff" + draw(st.binary(max_size=100))
    if kind == "scalar":
        return json.dumps(
            draw(
                st.none()
                | st.integers()
                | st.text(max_size=10)
                | st.lists(st.integers(), max_size=3)
            )
        )
    if kind == "no-type":
        fields = draw(
            st.dictionaries(
                st.text(max_size=8).filter(lambda k: k != "type"), json_values, max_size=4
            )
        )
        if draw(st.booleans()):
            fields["type"] = draw(st.none() | st.integers() | st.just(""))
        return json.dumps(fields)
    if kind == "reserved":
        return json.dumps(
            {
                "type": draw(st.sampled_from(["join", "leave", "welcome", "error"])),
                "data": draw(json_values),
            }
        )
    if kind == "shape":
        return json.dumps(
            draw(
                st.sampled_from(
                    [
                        {
                            "type": "track-state",
                            "kind": draw(
                                st.text(max_size=6).filter(lambda k: k not in ("audio", "video"))
                            ),
                            "enabled": True,
                        },
                        {
                            "type": "track-state",
                            "kind": "audio",
                            "enabled": draw(st.none() | st.integers() | st.text(max_size=4)),
                        },
                        {
                            "type": "cloudflare-session",
                            "sessionId": draw(st.none() | st.integers() | st.just("")),
                            "tracks": [],
                        },
                        {
                            "type": "cloudflare-session",
                            "sessionId": "s",
                            "tracks": draw(
                                st.integers() | st.lists(st.integers(), min_size=1, max_size=3)
                            ),
                        },
                    ]
                )
            )
        )
    return json.dumps(
        {"type": "offer", "to": draw(st.text(max_size=40).filter(lambda t: t != "all"))}
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pair(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[System, Member, Member]]:
    system = System(
        tmp_path_factory.mktemp("fuzz"),
        extra_env={
            "MAX_STRIKES": "1000000",
            # Room for frames and bodies nested 100,000 deep.
            "MAX_FRAME_BYTES": str(1 << 20),
            "MAX_BODY_BYTES": str(1 << 20),
            "ADMIN_API_KEY": ADMIN_KEY,
        },
    )
    try:
        await system.start()
        api = Api(system.edges[0].url)
        room_id = await api.create_room("fuzz")
        ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
        ben = await enter(api, system.edges[0].ws_url, room_id, "Ben")
        await ann.recv_type("join")
        yield system, ann, ben
        for opened in (ann.client, ben.client, api):
            await opened.close()
    finally:
        system.stop()


async def probe(sender: Member, receiver: Member, last_seq: list[int]) -> None:
    """A valid message still goes through, with the very next sequence number:
    nothing in between changed the room."""
    await sender.send({"type": "probe", "to": "all"})
    message = await receiver.recv()
    assert message["type"] == "probe", message
    assert message["room_seq"] == last_seq[0] + 1 or last_seq[0] == 0, (message, last_seq)
    last_seq[0] = message["room_seq"]


SEQ = [0]


@FUZZ
@given(frame=invalid_frames())
async def test_invalid_frames_get_an_error_and_change_nothing(
    pair: tuple[System, Member, Member], frame: str | bytes
) -> None:
    _, ann, ben = pair
    await ann.client.ws.send(frame)
    error = await ann.recv()
    assert error["type"] == "error", (frame, error)
    assert error["code"]
    assert error["message"]
    await probe(ann, ben, SEQ)


@FUZZ
@given(frame=mutated() | json_values.map(json.dumps))
async def test_any_frame_keeps_the_connection_working(
    pair: tuple[System, Member, Member], frame: str
) -> None:
    _, ann, ben = pair
    await ann.client.ws.send(frame)
    # Whatever it was, Ann is still connected and a valid message goes through;
    # if the frame was relayed, Ben sees it before the probe.
    await ann.send({"type": "probe", "to": "all"})
    while True:
        message = await ben.recv()
        if message["type"] == "probe":
            SEQ[0] = message["room_seq"]
            break
    while True:  # Ann's answers, if any, are errors
        await ben.send({"type": "mark", "to": ann.participant_id})
        got = await ann.recv()
        if got["type"] == "mark":
            break
        assert got["type"] == "error", got


@FUZZ
@given(body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
async def test_http_bodies_never_cause_a_server_error(
    pair: tuple[System, Member, Member], body: bytes
) -> None:
    system = pair[0]
    async with httpx.AsyncClient(base_url=system.edges[0].url) as http:
        for path in ("/api/rooms", f"/api/rooms/{'0' * 8}-0000-4000-8000-{'0' * 12}/join"):
            response = await http.post(
                path, content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code < 500, (path, body, response.text)
            if response.status_code >= 400:
                payload: dict[str, Any] = response.json()
                assert isinstance(payload["error"], str)


async def settle(ann: Member, ben: Member) -> None:
    """Read what the tests before left for Ann (marks), up to a fresh one."""
    await ben.send({"type": "settled", "to": ann.participant_id})
    while (await ann.recv())["type"] != "settled":
        pass


def assert_no_traceback(log: str) -> None:
    assert "Traceback" not in log
    errors = [line for line in log.splitlines() if '"level": "ERROR"' in line]
    assert errors == []


@pytest.mark.parametrize(
    "frame",
    [
        "[" * DEEP + "]" * DEEP,
        '{"a":' * DEEP + "1" + "}" * DEEP,
        '{"type":"chat","to":"all","x":' + "[" * DEEP + "]" * DEEP + "}",
        '{"type":"track-state","kind":"audio","enabled":true,"x":' + "[" * DEEP + "]" * DEEP + "}",
        b'{"type":"offer","to":"all","x":' + b"[" * DEEP + b"]" * DEEP + b"}",
    ],
    ids=["arrays", "objects", "broadcast", "track-state", "binary"],
)
async def test_deeply_nested_frames_get_an_error_and_change_nothing(
    pair: tuple[System, Member, Member], frame: str | bytes
) -> None:
    system, ann, ben = pair
    await settle(ann, ben)
    await ann.client.ws.send(frame)
    error = await ann.recv()
    assert (error["type"], error["code"]) == ("error", "too_deep")
    await probe(ann, ben, SEQ)
    assert_no_traceback(system.edges[0].log())


async def test_invalid_utf8_inside_a_string_gets_an_error(
    pair: tuple[System, Member, Member],
) -> None:
    system, ann, ben = pair
    await settle(ann, ben)
    await ann.client.ws.send(b'{"type":"chat","to":"all","text":"\xff"}')
    error = await ann.recv()
    assert (error["type"], error["code"]) == ("error", "invalid_json")
    await probe(ann, ben, SEQ)
    assert_no_traceback(system.edges[0].log())


async def test_deeply_nested_http_bodies_are_400(pair: tuple[System, Member, Member]) -> None:
    system, ann, _ = pair
    deep = b"[" * DEEP + b"]" * DEEP
    async with httpx.AsyncClient(base_url=system.edges[0].url) as http:
        created = await http.post("/api/rooms", json={"name": "deep"})
        room_id = created.json()["room_id"]
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        requests = [
            ("POST", "/api/rooms", deep, {}),
            ("POST", "/api/rooms", b'{"name":"x","created_by":' + deep + b"}", {}),
            ("POST", "/api/rooms", b'{"a":' * DEEP + b"1" + b"}" * DEEP, {}),
            ("POST", f"/api/rooms/{room_id}/join", b'{"participant_name":' + deep + b"}", {}),
            ("PATCH", f"/api/admin/rooms/{room_id}", b'{"name":' + deep + b"}", admin),
            (
                "POST",
                f"/api/admin/rooms/{room_id}/participants/{ann.participant_id}/mute",
                deep,
                admin,
            ),
        ]
        for method, path, body, headers in requests:
            response = await http.request(
                method,
                path,
                content=body,
                headers={"content-type": "application/json", **headers},
            )
            assert response.status_code == 400, (method, path, response.text)
            assert response.json() == {
                "error": "Invalid request body: nested too deeply",
                "code": "invalid_body",
            }
    assert_no_traceback(system.edges[0].log())
