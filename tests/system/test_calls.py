"""The Calls proxy through real edges, against the local Calls stand-in."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest

from bus_schema import buckets, codec
from tests.harness import CALLS_APP_SECRET as APP_SECRET
from tests.harness import TURN_TOKEN, Api, Member, System, WsClient, enter, opened
from tests.harness import calls_env as _calls_env
from tests.waiting import eventually
from tools.fakecalls import FakeCallsServer, sdp

pytestmark = pytest.mark.asyncio(loop_scope="session")


def calls_env(server: FakeCallsServer, **extra: str) -> dict[str, str]:
    return _calls_env(server.base_url, **extra)


@dataclass
class Caller:
    """A participant using the proxy the way an SFU client does."""

    member: Member
    http: httpx.AsyncClient
    session_id: str = ""

    @property
    def pid(self) -> str:
        return self.member.participant_id

    async def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return await self.http.request(
            method,
            f"/cloudflare{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.member.token}"},
        )

    async def create_session(self) -> str:
        response = await self.call("POST", "/session")
        assert response.status_code == 201, response.text
        self.session_id = response.json()["sessionId"]
        return self.session_id

    async def push(self, *names: str) -> list[dict[str, Any]]:
        media = [
            sdp.Media("audio" if "audio" in n else "video", str(i)) for i, n in enumerate(names)
        ]
        response = await self.call(
            "POST",
            f"/session/{self.session_id}/tracks/new",
            {
                "sessionDescription": {"type": "offer", "sdp": sdp.offer(media)},
                "tracks": [
                    {"location": "local", "mid": str(i), "trackName": n}
                    for i, n in enumerate(names)
                ],
            },
        )
        assert response.status_code == 200, response.text
        assert response.json()["sessionDescription"]["type"] == "answer"
        tracks: list[dict[str, Any]] = response.json()["tracks"]
        return tracks

    async def pull(self, publisher: "Caller", *names: str) -> httpx.Response:
        return await self.call(
            "POST",
            f"/session/{self.session_id}/tracks/new",
            {
                "tracks": [
                    {"location": "remote", "sessionId": publisher.session_id, "trackName": n}
                    for n in names
                ]
            },
        )

    async def renegotiate(self, offer: str) -> httpx.Response:
        answer = sdp.answer(sdp.media_of(offer))
        return await self.call(
            "PUT",
            f"/session/{self.session_id}/renegotiate",
            {"sessionDescription": {"type": "answer", "sdp": answer}},
        )


async def callers(
    api: Api, system: System, room_id: str, *names: str, http: httpx.AsyncClient | None = None
) -> list[Caller]:
    """Participants of ``room_id`` spread over the edges, sharing one HTTP client
    (a new one unless ``http`` is given; the test closes it)."""
    http = http or opened(httpx.AsyncClient(base_url=system.edges[0].url, timeout=30))
    out = []
    for index, name in enumerate(names):
        edge = system.edges[index % len(system.edges)]
        out.append(Caller(await enter(api, edge.ws_url, room_id, name), http))
    return out


async def test_two_participants_push_announce_and_pull_each_other(
    make_system: Callable[..., System], fake_calls: FakeCallsServer
) -> None:
    system = make_system(**calls_env(fake_calls))
    await system.start(edges=2)
    api = Api(system.edges[0].url)
    room_id = await api.create_room("sfu")
    ann, ben = await callers(api, system, room_id, "Ann", "Ben")
    await ann.member.recv_type("join")

    for caller, other in ((ann, ben), (ben, ann)):
        await caller.create_session()
        tracks = await caller.push(f"{caller.member.name}-audio", f"{caller.member.name}-video")
        assert [t["mid"] for t in tracks] == ["0", "1"]
        announced = [{"trackName": t["trackName"], "kind": "audio"} for t in tracks]
        await caller.member.send(
            {"type": "cloudflare-session", "sessionId": caller.session_id, "tracks": announced}
        )
        heard = await other.member.recv_type("cloudflare-session")
        assert (heard["participantId"], heard["sessionId"]) == (caller.pid, caller.session_id)

    # The ownership record is readable by operators.
    bus = await system.bus()
    kv = await bus.js.key_value(buckets.CALLS_SESSIONS)
    entry = await kv.get(ann.session_id)
    assert entry.value is not None
    record = codec.calls_session.decode(entry.value)
    assert (record.room_id, record.participant_id) == (room_id, ann.pid)
    await bus.close()

    for puller, publisher in ((ben, ann), (ann, ben)):
        name = publisher.member.name
        pulled = await puller.pull(publisher, f"{name}-audio", f"{name}-video")
        assert pulled.status_code == 200, pulled.text
        body = pulled.json()
        assert body["requiresImmediateRenegotiation"] is True
        assert [t["mid"] for t in body["tracks"]] == ["2", "3"]
        # Cloudflare refuses a second change until the offer is answered: passed back as is.
        early = await puller.pull(publisher, f"{name}-audio")
        assert early.status_code == 406
        assert early.json()["errorCode"] == "invalid_session_description"
        done = await puller.renegotiate(body["sessionDescription"]["sdp"])
        assert (done.status_code, done.json()) == (200, {})

    state = await ann.call("GET", f"/session/{ann.session_id}")
    assert state.status_code == 200
    assert sorted(t["trackName"] for t in state.json()["tracks"]) == [
        "Ann-audio",
        "Ann-video",
        "Ben-audio",
        "Ben-video",
    ]
    await ann.http.aclose()
    await api.close()


async def test_only_owners_change_sessions_and_pulls_stay_in_the_room(
    make_system: Callable[..., System], fake_calls: FakeCallsServer
) -> None:
    system = make_system(**calls_env(fake_calls))
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("owners")
    other_room = await api.create_room("elsewhere")
    ann, cy = await callers(api, system, room_id, "Ann", "Cy")
    [dee] = await callers(api, system, other_room, "Dee", http=ann.http)
    await ann.create_session()
    await ann.push("ann-audio")
    await cy.create_session()
    await dee.create_session()

    sid = ann.session_id
    for method, path, body in (
        ("POST", f"/session/{sid}/tracks/new", {"tracks": []}),
        (
            "PUT",
            f"/session/{sid}/renegotiate",
            {"sessionDescription": {"type": "answer", "sdp": ""}},
        ),
        ("PUT", f"/session/{sid}/tracks/close", {"tracks": [{"mid": "0"}], "force": True}),
        ("PUT", f"/session/{sid}/tracks/update", {"tracks": [{"mid": "0"}]}),
        ("POST", f"/session/{sid}/datachannels/new", {"dataChannels": []}),
        ("POST", f"/session/{sid}/datachannels/establish", {"dataChannel": {}}),
        ("PUT", f"/session/{sid}/datachannels/close", {"dataChannels": []}),
    ):
        refused = await cy.call(method, path, body)
        assert refused.status_code == 403, (method, path, refused.text)
        assert refused.json()["code"] == "not_session_owner"
    # Same room: Cy may read Ann's session and pull from it.
    assert (await cy.call("GET", f"/session/{sid}")).status_code == 200
    assert (await cy.pull(ann, "ann-audio")).status_code == 200
    # Another room: Dee may do neither.
    assert (await dee.call("GET", f"/session/{sid}")).status_code == 403
    outside = await dee.pull(ann, "ann-audio")
    assert outside.status_code == 403
    assert outside.json()["code"] == "session_outside_room"
    channel = await dee.call(
        "POST",
        f"/session/{dee.session_id}/datachannels/new",
        {"dataChannels": [{"location": "remote", "sessionId": sid, "dataChannelName": "chat"}]},
    )
    assert channel.status_code == 403
    # Announcing someone else's session over the WebSocket is refused too.
    await cy.member.send({"type": "cloudflare-session", "sessionId": sid, "tracks": []})
    assert (await cy.member.recv_type("error"))["code"] == "session_not_owned"
    # No token, a bad token: 401.
    http = ann.http
    assert (await http.post("/cloudflare/session")).status_code == 401
    bad = await http.post("/cloudflare/session", headers={"Authorization": "Bearer nope"})
    assert (bad.status_code, bad.json()["error"]) == (401, "Invalid token")
    await http.aclose()
    await api.close()


async def test_leaving_closes_the_leavers_pushed_tracks_upstream(
    make_system: Callable[..., System], fake_calls: FakeCallsServer
) -> None:
    system = make_system(**calls_env(fake_calls))
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("cleanup")
    ann, ben = await callers(api, system, room_id, "Ann", "Ben")
    await ann.create_session()
    await ann.push("ann-audio", "ann-video")
    await ann.member.client.close()
    await ben.member.recv_type("leave")
    session = fake_calls.fake.sessions[ann.session_id]
    await eventually(
        lambda: not any(t.status == "active" for t in session.tracks.values()),
        timeout=20,
        message="the leaver's tracks were never closed",
    )
    closes = [
        s for s in fake_calls.fake.served if s.path.endswith(f"{ann.session_id}/tracks/close")
    ]
    assert closes
    assert closes[-1].body["force"] is True
    assert sorted(t["mid"] for t in closes[-1].body["tracks"]) == ["0", "1"]
    await ben.http.aclose()
    await api.close()


async def test_upstream_failures(
    make_system: Callable[..., System], fake_calls: FakeCallsServer
) -> None:
    system = make_system(**calls_env(fake_calls, CALLS_TIMEOUT="1", CALLS_RETRIES="2"))
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("faults")
    [ann] = await callers(api, system, room_id, "Ann")
    await ann.create_session()
    fake = fake_calls.fake
    path = f"/session/{ann.session_id}"

    def attempts() -> int:
        return sum(1 for s in fake.served if s.path.endswith(f"sessions/{ann.session_id}"))

    # A transient 5xx and a 429 are retried: the caller sees the success.
    before = attempts()
    fake.fail_next.extend([503, 429])
    assert (await ann.call("GET", path)).status_code == 200
    assert attempts() - before == 3
    # A 5xx that persists comes back as it is, after the retries.
    fake.fail_next.extend([502, 502, 502])
    persistent = await ann.call("GET", path)
    assert persistent.status_code == 502
    assert persistent.json()["errorCode"] == "injected"
    # A create is never retried.
    creates = sum(1 for s in fake.served if s.path.endswith("/sessions/new"))
    fake.fail_next.append(503)
    assert (await ann.call("POST", "/session")).status_code == 503
    assert sum(1 for s in fake.served if s.path.endswith("/sessions/new")) == creates + 1
    # Slow: 504 with a JSON error.
    fake.delay = 2.0
    slow = await ann.call("GET", path)
    fake.delay = 0.0
    assert slow.status_code == 504
    assert slow.json()["error"] == "Cloudflare Calls timed out"
    # Down: 502 with a JSON error.
    await fake_calls.stop()
    down = await ann.call("GET", path)
    assert down.status_code == 502
    assert down.json()["error"] == "Cloudflare Calls is unreachable"
    logs = system.logs()
    for secret in (APP_SECRET, TURN_TOKEN, ann.member.token):
        assert secret not in logs
        assert secret not in down.text
    await ann.http.aclose()
    await api.close()


async def test_turn_credentials_are_per_participant_short_lived_and_for_members_only(
    make_system: Callable[..., System], fake_calls: FakeCallsServer
) -> None:
    system = make_system(**calls_env(fake_calls, TURN_CREDENTIALS_TTL="600"))
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("turn")
    first = await api.join(room_id, "Ann")
    servers = first["ice_servers"]
    turn = next(s for s in servers if "username" in s)
    assert turn["credential"]
    urls = [u for s in servers for u in s["urls"]]
    assert any(u.startswith("turns:") for u in urls)
    assert not any(u.split("?")[0].endswith(":53") for u in urls)
    asked = [s.body for s in fake_calls.fake.served if "generate-ice-servers" in s.path]
    assert asked == [{"ttl": 600}]  # short-lived, as configured
    # Per participant: Ben's are his own.
    second = await api.join(room_id, "Ben")
    ben_turn = next(s for s in second["ice_servers"] if "username" in s)
    assert ben_turn["username"] != turn["username"]
    async with httpx.AsyncClient(base_url=system.edges[0].url) as http:
        # Renewed by the participant (the same until half their life has passed).
        ice = await http.get(
            "/cloudflare/ice-servers", headers={"Authorization": f"Bearer {first['token']}"}
        )
        assert ice.json()["iceServers"] == servers
        assert 0 < ice.json()["ttl"] <= 600
        assert first["ice_servers_ttl"] == 600
        assert (await http.get("/cloudflare/ice-servers")).status_code == 401
        # Someone who left gets none.
        ann = await WsClient.connect(system.edges[0].ws_url, first["token"])
        await ann.recv_type("welcome")
        ben = await WsClient.connect(system.edges[0].ws_url, second["token"])
        await ben.recv_type("welcome")
        await ann.close()
        assert (await ben.recv_type("leave"))["from"] == first["participant_id"]
        gone = await http.get(
            "/cloudflare/ice-servers", headers={"Authorization": f"Bearer {first['token']}"}
        )
        assert (gone.status_code, gone.json()["code"]) == (403, "not_in_room")
        await ben.close()
    assert jwt.decode(first["token"], options={"verify_signature": False})["room_id"] == room_id
    await api.close()


async def test_open_proxy_for_legacy_clients_warns_loudly(
    make_system: Callable[..., System], fake_calls: FakeCallsServer
) -> None:
    system = make_system(**calls_env(fake_calls, CALLS_PROXY_AUTH="off"))
    await system.start()
    async with httpx.AsyncClient(base_url=system.edges[0].url) as http:
        created = await http.post("/cloudflare/session")
        assert created.status_code == 201
        sid = created.json()["sessionId"]
        offer = sdp.offer([sdp.Media("audio", "0")])
        pushed = await http.post(
            f"/cloudflare/session/{sid}/tracks/new",
            json={
                "sessionDescription": {"type": "offer", "sdp": offer},
                "tracks": [{"location": "local", "mid": "0", "trackName": "t"}],
            },
        )
        assert pushed.status_code == 200
    assert "CALLS_PROXY_AUTH=off" in system.edges[0].log()
