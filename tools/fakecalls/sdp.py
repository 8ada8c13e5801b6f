"""Just enough SDP for the Calls stand-in: read the m-sections of an offer,
write valid answers and offers that a browser accepts.

Like the real SFU, a session's descriptions keep one ICE and DTLS identity
(``Transport``) and always cover every m-section negotiated so far, in order:
a browser refuses a later offer that drops or reorders m-lines."""

import secrets
from dataclasses import dataclass, field

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_MIRROR = {"sendonly": "recvonly", "recvonly": "sendonly", "sendrecv": "sendrecv"}


@dataclass(frozen=True, slots=True)
class Media:
    kind: str
    """``audio``, ``video`` or ``application`` (data channels)."""
    mid: str
    track: str = ""
    direction: str = ""
    """As written in the SDP it came from (empty: not stated); in what the
    stand-in writes, the SFU's own direction."""


class SdpError(ValueError):
    """Not an SDP we can read."""


def _fingerprint() -> str:
    return ":".join(f"{b:02X}" for b in secrets.token_bytes(32))


@dataclass(slots=True)
class Transport:
    """One SFU session's ICE credentials and DTLS fingerprint, and the version
    of its latest description."""

    origin: str = field(default_factory=lambda: str(secrets.randbits(62)))
    ufrag: str = field(default_factory=lambda: secrets.token_hex(4))
    pwd: str = field(default_factory=lambda: secrets.token_hex(12))
    fingerprint: str = field(default_factory=_fingerprint)
    version: int = 1


def media_of(sdp: str) -> list[Media]:
    """The m-sections of an SDP, with their mids and directions, in order."""
    if not sdp.startswith("v=0"):
        raise SdpError("SDP must start with v=0")
    sections: list[Media] = []
    kind: str | None = None
    mid: str | None = None
    direction = ""

    def close() -> None:
        if kind is not None:
            sections.append(
                Media(kind, mid if mid is not None else str(len(sections)), "", direction)
            )

    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            close()
            parts = line[2:].split()
            if not parts:
                raise SdpError("empty m= line")
            kind, mid, direction = parts[0], None, ""
        elif kind is not None and line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        elif kind is not None and line[2:] in DIRECTIONS and line.startswith("a="):
            direction = line[2:]
    close()
    return sections


def _session(transport: Transport, mids: list[str]) -> list[str]:
    transport.version += 1
    return [
        "v=0",
        f"o=- {transport.origin} {transport.version} IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        f"a=group:BUNDLE {' '.join(mids)}",
        "a=ice-lite",
    ]


def _section(media: Media, direction: str, setup: str, transport: Transport) -> list[str]:
    port_proto = (
        "9 UDP/DTLS/SCTP webrtc-datachannel"
        if media.kind == "application"
        else "9 UDP/TLS/RTP/SAVPF"
    )
    formats = {"audio": " 111", "video": " 96", "application": ""}.get(media.kind, " 96")
    lines = [
        f"m={media.kind} {port_proto}{formats}",
        "c=IN IP4 0.0.0.0",
        f"a=mid:{media.mid}",
        f"a=ice-ufrag:{transport.ufrag}",
        f"a=ice-pwd:{transport.pwd}",
        f"a=fingerprint:sha-256 {transport.fingerprint}",
        f"a=setup:{setup}",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 3478 typ host",
        "a=end-of-candidates",
    ]
    if media.kind == "application":
        return [*lines, "a=sctp-port:5000"]
    codec = "a=rtpmap:111 opus/48000/2" if media.kind == "audio" else "a=rtpmap:96 VP8/90000"
    lines += [f"a={direction}", "a=rtcp-mux", codec]
    if media.track and direction in ("sendonly", "sendrecv"):
        lines.append(f"a=msid:{media.track} {media.track}")
    return lines


def answer(offer: list[Media], transport: Transport | None = None) -> str:
    """The SFU's answer to a client's offer, m-section by m-section: receive what
    the client sends, send what it receives."""
    transport = transport or Transport()
    lines = _session(transport, [m.mid for m in offer])
    for media in offer:
        direction = _MIRROR.get(media.direction, "inactive" if media.direction else "recvonly")
        lines += _section(media, direction, "passive", transport)
    return "\r\n".join(lines) + "\r\n"


def offer(media: list[Media], transport: Transport | None = None) -> str:
    """The SFU's offer (for pulled tracks or data channels): every section of the
    session, each with the SFU's direction (sendonly when not stated)."""
    transport = transport or Transport()
    lines = _session(transport, [m.mid for m in media])
    for section in media:
        lines += _section(section, section.direction or "sendonly", "actpass", transport)
    return "\r\n".join(lines) + "\r\n"
