"""What the relay scenario sends: the old service's message types, each
carrying its send time in ``ts`` (both servers relay unknown fields untouched,
so latency is measured the same way for every kind).

- ``bench``: a custom broadcast (``"to":"all"``): no state, no event log; the
  floor's twin.
- ``track-state``: the sender toggles its audio (``enabled`` flips on every
  send), so every one is a change the room's actor saves and logs.
- ``session``: ``cloudflare-session`` with the sender's session id (32 hex) and
  two tracks (audio, video), as a Calls client announces them; the actor keeps
  them (a saved, logged change every time).
- ``offer``: bursts as at a P2P call set-up between two members of a room: an
  ``offer`` (a ~3 KB SDP) one way, the ``answer`` (~3 KB) back, and 8
  ``ice-candidate`` each way, 18 targeted frames sent at once. Targeted frames
  go edge to edge, not through the actor, and are not numbered.
- ``mix``: per 90 messages, 63 track-state toggles (70 %), 9 cloudflare-session
  (10 %) and one set-up burst (18 targeted frames, 20 %), in a fixed shuffled
  order.

Payloads are byte templates filled at send time: the load generator spends its
CPU on sending, not on encoding.
"""

import random
import time
import uuid

import msgspec

from bench.client import BenchClient, timestamped

MESSAGES = ("bench", "track-state", "session", "offer", "mix")
ICE_PER_SIDE = 8
BURST = 2 + 2 * ICE_PER_SIDE
"""Frames of one call set-up: offer, answer and the candidates of both sides."""
MIX = (("track-state", 63), ("session", 9), ("offer", 1))
"""Units per cycle of the mix: 63 + 9 single messages and one burst of 18 = 90
messages, 70 % / 10 % / 20 %."""


def _sdp(kind: str, size: int = 3000) -> bytes:
    """A JSON string of an SDP of about ``size`` bytes (audio and video, as a
    browser writes it; the server never reads it)."""
    head = (
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        "a=group:BUNDLE 0 1\r\na=msid-semantic: WMS\r\n"
    )
    line = f"a=fmtp:96 apt=100;x-{kind}-parameters-and-codec-options=0123456789\r\n"
    return msgspec.json.encode(head + line * ((size - len(head)) // len(line)))


_OFFER = (
    b'{"type":"offer","to":"%s","description":{"type":"offer","sdp":' + _sdp("o") + b'},"ts":%d}'
)
_ANSWER = (
    b'{"type":"answer","to":"%s","description":{"type":"answer","sdp":' + _sdp("a") + b'},"ts":%d}'
)
_CANDIDATE = (
    b'{"type":"ice-candidate","to":"%s","candidate":{"candidate":"candidate:%d 1 udp 2122260223 '
    b'192.168.1.%d 5%d000 typ host generation 0 ufrag Xb7q network-id 1","sdpMid":"0",'
    b'"sdpMLineIndex":0},"ts":%d}'
)
_TRACK_STATE = b'{"type":"track-state","kind":"audio","enabled":%s,"ts":%d}'


def _session_template() -> bytes:
    """One client's ``cloudflare-session`` up to its ``ts``."""
    session_id = uuid.uuid4().hex
    tracks = [
        {
            "trackName": str(uuid.uuid4()),
            "kind": kind,
            "mid": str(mid),
            "location": "local",
            "sessionId": session_id,
        }
        for mid, kind in enumerate(("audio", "video"))
    ]
    message = {"type": "cloudflare-session", "sessionId": session_id, "tracks": tracks}
    return msgspec.json.encode(message)[:-1] + b',"ts":%d}'


def _mix_cycle(seed: int = 17) -> list[str]:
    cycle = [kind for kind, units in MIX for _ in range(units)]
    random.Random(seed).shuffle(cycle)
    return cycle


def deliveries_per_message(message: str, size: int) -> float:
    """Deliveries one message asks for on average in rooms of ``size``: a
    room-wide one reaches the others, a targeted one its peer."""
    if message == "offer":
        return 1.0
    if message == "mix":
        units = dict(MIX)
        room_wide = units["track-state"] + units["session"]
        targeted = units["offer"] * BURST
        return (room_wide * (size - 1) + targeted) / (room_wide + targeted)
    return float(size - 1)


class Traffic:
    """The clients' messages of one kind, round robin over the clients (room
    by room for set-up bursts): `send_next` sends one message or one burst."""

    def __init__(self, message: str, rooms: list[list[BenchClient]]) -> None:
        if message not in MESSAGES:
            raise ValueError(f"unknown message kind {message!r}")
        self.rooms = rooms
        self.clients = [c for room in rooms for c in room]
        self.size = len(rooms[0])
        self.cycle = _mix_cycle() if message == "mix" else [message]
        self.step = 0
        self.index = 0
        self.calls = 0
        self.audio = [False] * len(self.clients)
        self.sessions = [_session_template() for _ in self.clients]

    def send_next(self) -> tuple[int, int]:
        """Send the next message (or burst): the frames sent and the deliveries due."""
        kind = self.cycle[self.step % len(self.cycle)]
        self.step += 1
        if kind == "offer":
            return self._call_set_up()
        index = self.index % len(self.clients)
        self.index += 1
        client = self.clients[index]
        if kind == "track-state":
            self.audio[index] = enabled = not self.audio[index]
            client.send(_TRACK_STATE % (b"true" if enabled else b"false", time.time_ns()))
        elif kind == "session":
            client.send(self.sessions[index] % time.time_ns())
        else:
            client.send(timestamped())
        return 1, self.size - 1

    def _call_set_up(self) -> tuple[int, int]:
        """One member calls the next one of its room: offer, answer, and the
        candidates of both sides interleaved, all at once."""
        room = self.rooms[self.calls % len(self.rooms)]
        caller_at = (self.calls // len(self.rooms)) % self.size
        self.calls += 1
        caller, callee = room[caller_at], room[(caller_at + 1) % self.size]
        to_callee = _peer(caller, callee.participant_id).encode()
        to_caller = _peer(callee, caller.participant_id).encode()
        caller.send(_OFFER % (to_callee, time.time_ns()))
        callee.send(_ANSWER % (to_caller, time.time_ns()))
        for n in range(ICE_PER_SIDE):
            caller.send(_CANDIDATE % (to_callee, n, n, n, time.time_ns()))
            callee.send(_CANDIDATE % (to_caller, n, n + 100, n, time.time_ns()))
        return BURST, BURST


def _peer(client: BenchClient, participant_id: str) -> str:
    """A peer's id as ``client`` knows it (from its welcome and the joins)."""
    if participant_id not in client.peers:
        raise LookupError(f"{client.participant_id} does not know {participant_id}")
    return participant_id
