"""The web client in a real browser: Debian's Chromium, headless, driven by
Playwright, with fake camera and microphone. People call each other through
different edges of a running multi-edge system."""

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, Request, WebSocket, async_playwright

from edge.auth import TokenService
from tests.harness import JWT_SECRET, Api, System, calls_env
from tests.links import Link
from tests.waiting import eventually
from tools.fakecalls import FakeCallsServer

CHROMIUM = (
    os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)
ARTIFACTS = Path(
    os.environ.get("TEST_ARTIFACTS", Path(__file__).parents[2] / "tests" / "artifacts")
)
WAIT = 45.0

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium: install Debian's `chromium` package (.ci/run does) "
        "or set CHROMIUM=/path/to/chromium to run the browser tests",
    ),
]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


@pytest_asyncio.fixture(loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


async def open_page(browser: Browser, url: str) -> Page:
    """A page in its own browser context (its own storage), camera and mic allowed."""
    context = await browser.new_context(
        permissions=["camera", "microphone"], viewport={"width": 960, "height": 400}
    )
    page = await context.new_page()
    page.set_default_timeout(WAIT * 1000)
    await page.goto(url)
    return page


async def join(browser: Browser, base_url: str, room_id: str, name: str) -> Page:
    page = await open_page(browser, f"{base_url}/?room={room_id}")
    await page.fill("#display-name", name)
    await page.click("#join-form button")
    await page.wait_for_selector("#status[data-state=connected]")
    return page


async def until(page: Page, script: str, arg: Any = None, timeout: float = WAIT) -> Any:
    """Poll ``script`` (an async JS function of one argument) in the page until
    it returns something truthy, within ``timeout`` seconds."""
    last: list[Any] = [None]

    async def evaluate() -> Any:
        last[0] = await page.evaluate(script, arg)
        return last[0]

    return await eventually(
        evaluate,
        timeout=timeout,
        interval=0.2,
        message=lambda: f"timed out waiting for {script!r} (last: {last[0]!r})",
    )


PEER_MEDIA = """async (want) => {
  const call = window.signaling.call;
  if (!call || call.peers.size !== want) return null;
  const out = {};
  for (const [id, link] of call.peers) {
    if (link.pc.connectionState !== "connected") return null;
    let frames = 0;
    (await link.pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") frames += r.framesDecoded || 0;
    });
    const video = document.querySelector(`.tile[data-participant-id="${id}"] video`);
    if (frames === 0 || !video || video.videoWidth === 0) return null;
    out[id] = frames;
  }
  return out;
}"""


ROW = 'document.querySelector(`#participants li[data-participant-id="${id}"]`)'
ROW_SAYS = f"([id, key, value]) => {ROW}?.dataset[key] === value"
"""The participant list shows ``key`` (audio/video) of participant ``id`` as ``value``."""
GONE = f"(id) => !{ROW} && window.signaling.call.peers.size === 1"
GONE_FROM_LIST = f"(id) => !{ROW}"
LISTS = f"(ids) => ids.every((id) => {ROW})"
"""The participant list shows every one of ``ids``."""


async def media_flowing(page: Page, peers: int) -> dict[str, int]:
    """Every peer link connected, video decoded from each, and still flowing."""
    first: dict[str, int] = await until(page, PEER_MEDIA, peers)
    more: dict[str, int] = await until(
        page,
        """async ([want, first]) => {
          const now = await ("""
        + PEER_MEDIA
        + """)(want);
          if (!now) return null;
          return Object.keys(first).every((id) => now[id] > first[id] + 5) ? now : null;
        }""",
        [peers, first],
    )
    return more


async def me(page: Page) -> str:
    participant_id: str = await page.evaluate("window.signaling.call.me")
    return participant_id


async def listed(page: Page) -> dict[str, dict[str, str]]:
    """The participant list as shown: id -> audio/video/name."""
    rows: dict[str, dict[str, str]] = await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#participants li')].map(
             (li) => [li.dataset.participantId, {audio: li.dataset.audio, video: li.dataset.video,
                                                name: li.querySelector('.name').textContent}]))"""
    )
    return rows


async def events(page: Page) -> list[dict[str, str]]:
    seen: list[dict[str, str]] = await page.evaluate("window.signaling.events")
    return seen


async def test_a_call_between_browsers_on_different_edges(
    make_system: Callable[..., System], browser: Browser
) -> None:
    # Loopback only: no STUN server to ask, host candidates are enough here.
    system = make_system(STUN_URLS="")
    await system.start(edges=2)
    edge_a, edge_b = system.edges
    cable = await Link(edge_a.port).start()  # the browser's link to the service
    api = Api(edge_a.url)
    try:
        room_id = await api.create_room("browser call")

        # Two people, each through another edge, reach each other with video both ways.
        alice = await join(browser, cable.url, room_id, "Alice")
        bob = await join(browser, edge_b.url, room_id, "Bob")
        assert await alice.evaluate("window.signaling.mode") == "p2p"
        await media_flowing(alice, 1)
        await media_flowing(bob, 1)
        alice_id, bob_id = await me(alice), await me(bob)
        assert set(await listed(alice)) == set(await listed(bob)) == {alice_id, bob_id}
        await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
        await alice.screenshot(path=str(ARTIFACTS / "two-person-call.png"))

        # A third joins later, sees both, and everybody is connected to everybody.
        carol = await join(browser, edge_a.url, room_id, "Carol")
        carol_id = await me(carol)
        for page in (alice, bob, carol):
            await media_flowing(page, 2)
            await until(
                page, "(n) => document.querySelectorAll('#participants li').length === n", 3
            )
        names = {row["name"] for row in (await listed(carol)).values()}
        assert names == {"Alice", "Bob", "Carol (you)"}

        # Bob mutes his microphone: the others see it.
        await bob.click("#toggle-audio")
        for page in (alice, carol):
            await until(page, ROW_SAYS, [bob_id, "audio", "false"])
        assert (await listed(bob))[bob_id]["audio"] == "false"

        # Alice's WebSocket drops (no Close frame) and her link now leads to the
        # other edge: she reconnects, resumes, and nobody sees her leave or join.
        welcomes = sum(e["type"] == "welcome" for e in await events(alice))
        marks = {page: len(await events(page)) for page in (bob, carol)}
        cable.cut(new_upstream=edge_b.port)
        await until(
            alice,
            "(n) => window.signaling.events.filter((e) => e.type === 'welcome').length > n",
            welcomes,
        )
        await alice.wait_for_selector("#status[data-state=connected]")
        await alice.click("#toggle-video")
        for page in (bob, carol):
            await until(page, ROW_SAYS, [alice_id, "video", "false"])
            since = (await events(page))[marks[page] :]
            churn = [e for e in since if e["type"] in ("join", "leave") and e["from"] == alice_id]
            assert churn == [], since
        await media_flowing(alice, 2)

        # Carol closes her tab: the others see her leave.
        await carol.context.close()
        for page in (alice, bob):
            await until(page, GONE, carol_id)
            assert {"type": "leave", "from": carol_id} in await events(page)
    finally:
        await api.close()
        await cable.close()


async def test_the_page_says_what_went_wrong(
    make_system: Callable[..., System], browser: Browser
) -> None:
    system = make_system(STUN_URLS="")
    await system.start(edges=1)
    url = system.edges[0].url
    api = Api(url)
    try:
        # No room in the link: the page offers to create one, and does.
        page = await open_page(browser, f"{url}/")
        await page.fill("#room-name", "made in a browser")
        await page.click("#create-form button")
        await page.wait_for_selector("#join-view:not([hidden])")
        # An open room keeps its old link: the room in the query, no fragment.
        link = urlsplit(page.url)
        assert parse_qs(link.query).keys() == {"room"}, page.url
        assert link.fragment == "", page.url
        assert await page.text_content("#room-title") == "made in a browser"

        # A link to a room that does not exist.
        missing = await open_page(browser, f"{url}/?room=00000000-0000-4000-8000-000000000000")
        await missing.wait_for_selector("#error:not([hidden])")
        assert "invalid or the room has expired" in (await missing.text_content("#error") or "")
        garbage = await open_page(browser, f"{url}/?room=not-a-room")
        await garbage.wait_for_selector("#error:not([hidden])")
        assert "invalid or the room has expired" in (await garbage.text_content("#error") or "")

        # A full room.
        room_id = await api.create_room("tiny", max_participants=1)
        await join(browser, url, room_id, "First")
        second = await open_page(browser, f"{url}/?room={room_id}")
        await second.fill("#display-name", "Second")
        await second.click("#join-form button")
        await second.wait_for_selector("#error:not([hidden])")
        assert await second.text_content("#error") == "This room is full."
        assert await second.is_visible("#join-view")
    finally:
        await api.close()


async def test_a_call_through_the_calls_sfu(
    make_system: Callable[..., System], browser: Browser, fake_calls: FakeCallsServer
) -> None:
    """With Calls configured, the page publishes through the proxy and pulls the
    others' tracks (the stand-in negotiates but carries no media)."""
    system = make_system(STUN_URLS="", TURN_CREDENTIALS_TTL="10", **calls_env(fake_calls.base_url))
    await system.start(edges=2)
    edge_a, edge_b = system.edges
    api = Api(edge_a.url)
    try:
        room_id = await api.create_room("sfu call")
        alice = await join(browser, edge_a.url, room_id, "Alice")
        bob = await join(browser, edge_b.url, room_id, "Bob")
        assert await alice.evaluate("window.signaling.mode") == "sfu"
        alice_id, bob_id = await me(alice), await me(bob)
        pulled = """(id) => {
          const call = window.signaling.call;
          const p = call.participants.get(id);
          const pulled = call.sfu.pulled.get(id);
          return p && p.session && pulled && pulled.mids.length === 2
            && call.sfu.pc.signalingState === "stable" ? p.session : null;
        }"""
        bob_session = await until(alice, pulled, bob_id)
        alice_session = await until(bob, pulled, alice_id)
        # The stand-in saw both publish two tracks and pull the other's two.
        sessions = fake_calls.fake.sessions
        assert {
            t.track_name for t in sessions[alice_session].tracks.values() if t.location == "local"
        } == {
            f"{alice_id}-audio",
            f"{alice_id}-video",
        }
        assert bob_session in sessions
        for page in (alice, bob):
            assert await page.is_hidden("#error"), await page.text_content("#error")
        # TURN credentials live 10 s here: the page renews them at half their
        # life and hands them to its peer connection.
        first = await alice.evaluate(
            "window.signaling.call.sfu.pc.getConfiguration().iceServers"
            ".find((s) => s.username).username"
        )
        renewed = await until(
            alice,
            """(first) => {
              const servers = window.signaling.call.sfu.pc.getConfiguration().iceServers;
              const turn = servers.find((s) => s.username);
              return window.signaling.iceRenewals > 0 && turn.username !== first
                ? turn.username : null;
            }""",
            first,
            timeout=20,
        )
        assert renewed != first
    finally:
        await api.close()


async def test_the_page_follows_what_an_operator_does(
    make_system: Callable[..., System], browser: Browser
) -> None:
    """Mute, remove and close through the room service API, seen in the pages."""
    system = make_system(STUN_URLS="")
    await system.start(edges=1)
    url = system.edges[0].url
    api = Api(url)
    token = TokenService(JWT_SECRET, ttl=600).issue_admin()
    admin = httpx.AsyncClient(
        base_url=f"{url}/api/admin", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    try:
        room_id = await api.create_room("moderated call")
        alice = await join(browser, url, room_id, "Alice")
        bob = await join(browser, url, room_id, "Bob")
        alice_id, bob_id = await me(alice), await me(bob)

        muted = await admin.post(
            f"/rooms/{room_id}/participants/{alice_id}/mute", json={"kind": "audio"}
        )
        assert muted.status_code == 200, muted.text
        # Alice's own microphone is turned off, and everyone's list says so.
        await until(
            alice, "() => document.querySelector('#toggle-audio').textContent === 'Unmute mic'"
        )
        assert await alice.evaluate(
            "window.signaling.call.stream.getAudioTracks().every((t) => !t.enabled)"
        )
        for page in (alice, bob):
            await until(page, ROW_SAYS, [alice_id, "audio", "false"])

        removed = await admin.delete(f"/rooms/{room_id}/participants/{bob_id}")
        assert removed.status_code == 200, removed.text
        await bob.wait_for_selector("#error:not([hidden])")
        assert await bob.text_content("#error") == "You were removed from the room."
        await until(alice, GONE_FROM_LIST, bob_id)

        closed = await admin.delete(f"/rooms/{room_id}")
        assert closed.status_code == 200, closed.text
        await alice.wait_for_selector("#error:not([hidden])")
        assert await alice.text_content("#error") == "The room was closed."
        await alice.wait_for_selector("#status[data-state=closed]")
    finally:
        await admin.aclose()
        await api.close()


PRIVATE_WORDS = (
    "This room is private. The link you opened is missing its secret or the secret is no "
    "longer valid; ask for a new link."
)


def fragment(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).fragment).items()}


def record_requests(page: Page) -> list[str]:
    """Every request line and header, and every WebSocket address, the page
    uses from now on (what an access log or a proxy in front of the edge could
    see), one string each."""
    seen: list[str] = []

    def note(request: Request) -> None:
        seen.append(f"{request.method} {request.url} {request.headers}")

    def note_socket(socket: WebSocket) -> None:
        seen.append(f"WS {socket.url}")

    page.on("request", note)
    page.on("websocket", note_socket)
    return seen


async def shows_error(page: Page) -> str:
    await page.wait_for_selector("#error:not([hidden])")
    return await page.text_content("#error") or ""


async def test_a_private_room_is_joined_by_its_link_and_only_by_it(
    make_system: Callable[..., System], browser: Browser
) -> None:
    """The page's "Create a private room" makes a `secret` room whose link carries
    the secret in its fragment only; the link gets a second person in; a link with a
    wrong secret or none says so in plain words, as does an invite-only room."""
    system = make_system(STUN_URLS="")
    await system.start(edges=1)
    url = system.edges[0].url
    api = Api(url)
    try:
        alice = await open_page(browser, f"{url}/")
        alice_requests = record_requests(alice)
        await alice.fill("#room-name", "private talk")
        await alice.click("#create-private-room")
        await alice.wait_for_selector("#join-view:not([hidden])")

        # The room and its secret are in the fragment; the path and query carry neither.
        link = urlsplit(alice.url)
        secret = fragment(alice.url)["secret"]
        room_id = fragment(alice.url)["room"]
        assert len(secret) >= 20, alice.url
        assert (link.path, link.query) == ("/", ""), alice.url
        assert await alice.get_attribute("#share-link", "href") == alice.url
        assert await alice.text_content("#room-title") == "private talk"
        # The service made a secret room: unknown to a GET, refused without the secret.
        assert (await api.http.get(f"/api/rooms/{room_id}")).status_code == 404
        refused = await api.http.post(f"/api/rooms/{room_id}/join", json={})
        assert (refused.status_code, refused.json()["code"]) == (403, "join_secret_required")

        await alice.fill("#display-name", "Alice")
        await alice.click("#join-form button")
        await alice.wait_for_selector("#status[data-state=connected]")

        # A second person opens the link and joins: each sees the other.
        bob = await open_page(browser, alice.url)
        bob_requests = record_requests(bob)
        await bob.fill("#display-name", "Bob")
        await bob.click("#join-form button")
        await bob.wait_for_selector("#status[data-state=connected]")
        alice_id, bob_id = await me(alice), await me(bob)
        for page in (alice, bob):
            await until(page, LISTS, [alice_id, bob_id])
        # The secret went to the service in a join's body only: in no request
        # line or header of either page (nothing an access log could keep).
        sent = alice_requests + bob_requests
        assert any("/join" in line for line in sent), sent
        assert any(line.startswith("WS ") for line in sent), sent
        assert not [line for line in sent if secret in line], sent

        # A wrong secret: the page says so when joining, and stays on the join view.
        wrong = await open_page(browser, f"{url}/#room={room_id}&secret={secret[::-1]}")
        await wrong.fill("#display-name", "Mallory")
        await wrong.click("#join-form button")
        assert await shows_error(wrong) == PRIVATE_WORDS
        assert await wrong.is_visible("#join-view")
        # No secret at all (the link cut short, or the room id alone): said at once.
        for bare in (f"{url}/#room={room_id}", f"{url}/?room={room_id}"):
            assert await shows_error(await open_page(browser, bare)) == PRIVATE_WORDS
        # Nobody got in on the way.
        assert set(await listed(alice)) == {alice_id, bob_id}

        # An invite-only room: a link to it says that it is.
        invite_only = await api.create_room("invite only", join_policy="token")
        page = await open_page(browser, f"{url}/?room={invite_only}")
        assert "invite-only" in await shows_error(page)
    finally:
        await api.close()


MODERATION_BUTTONS = """() => Object.fromEntries(
  [...document.querySelectorAll('#participants li')].map((li) => [
    li.dataset.participantId, [...li.querySelectorAll('button')].map((b) => b.textContent)]))"""
"""The participant list's buttons: id -> their labels."""


async def test_a_room_admin_mutes_and_removes_from_the_page(
    make_system: Callable[..., System], browser: Browser
) -> None:
    """A link carrying a minted token (`#room=..&token=..`) opens the call with
    it; with `room_admin` the page shows Mute and Remove next to the others, and
    they work; pages without the grant show no such buttons."""
    system = make_system(STUN_URLS="")
    await system.start(edges=1)
    url = system.edges[0].url
    api = Api(url)
    admin_token = TokenService(JWT_SECRET, ttl=600).issue_admin()
    admin = httpx.AsyncClient(
        base_url=f"{url}/api/admin", headers={"Authorization": f"Bearer {admin_token}"}, timeout=10
    )

    async def mint(room_id: str, **body: Any) -> dict[str, str]:
        minted = await admin.post(f"/rooms/{room_id}/tokens", json=body)
        assert minted.status_code == 200, minted.text
        answer: dict[str, str] = minted.json()
        return answer

    try:
        room_id = await api.create_room("moderated from a page")
        bob = await join(browser, url, room_id, "Bob")
        # Carol comes with a minted token too, without the grant.
        carol_minted = await mint(room_id, identity="carol", name="Carol")
        carol = await open_page(browser, f"{url}/#room={room_id}&token={carol_minted['token']}")
        await carol.wait_for_selector("#status[data-state=connected]")
        moderator = await mint(room_id, name="Moderator", grants={"room_admin": True})
        # The link's token is enough: the page joins with it, under its name.
        mod = await open_page(browser, f"{url}/#room={room_id}&token={moderator['token']}")
        await mod.wait_for_selector("#status[data-state=connected]")
        bob_id, carol_id, mod_id = await me(bob), await me(carol), await me(mod)
        assert (carol_id, mod_id) == (carol_minted["participant_id"], moderator["participant_id"])
        for page in (bob, carol, mod):
            await until(page, LISTS, [bob_id, carol_id, mod_id])
        assert (await listed(bob))[mod_id]["name"] == "Moderator"

        # Mute and Remove next to each other participant, none next to itself;
        # the pages without the grant have no buttons at all.
        assert await mod.evaluate(MODERATION_BUTTONS) == {
            mod_id: [],
            bob_id: ["Mute", "Remove"],
            carol_id: ["Mute", "Remove"],
        }
        for page in (bob, carol):
            assert all(b == [] for b in (await page.evaluate(MODERATION_BUTTONS)).values())
        await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
        await mod.screenshot(path=str(ARTIFACTS / "room-admin.png"))

        # Mute: Bob's microphone goes off, he is told by whom, everyone sees it.
        row = f'#participants li[data-participant-id="{bob_id}"]'
        await mod.click(f"{row} button.mute")
        await until(
            bob, "() => document.querySelector('#toggle-audio').textContent === 'Unmute mic'"
        )
        assert await bob.evaluate(
            "window.signaling.call.stream.getAudioTracks().every((t) => !t.enabled)"
        )
        assert (
            await bob.text_content("#notice") == "Moderator (moderator) turned off your microphone."
        )
        for page in (carol, mod):
            await until(page, ROW_SAYS, [bob_id, "audio", "false"])

        # Remove: Bob is told, by whom, and is out; the others see him go.
        await mod.click(f"{row} button.remove")
        assert await shows_error(bob) == "Moderator (moderator) removed you from the room."
        await bob.wait_for_selector("#status[data-state=closed]")
        for page in (carol, mod):
            await until(page, GONE_FROM_LIST, bob_id)
            assert {"type": "leave", "from": bob_id} in await events(page)
        state = (await admin.get(f"/rooms/{room_id}")).json()
        assert {p["id"] for p in state["participants"]} == {carol_id, mod_id}, state
    finally:
        await admin.aclose()
        await api.close()
