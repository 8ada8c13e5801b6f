"""Just enough SDP for the Calls stand-in: read the m-sections of an offer,
write syntactically valid answers and offers."""

import secrets
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Media:
    kind: str
    """``audio``, ``video`` or ``application`` (data channels)."""
    mid: str
    track: str = ""


class SdpError(ValueError):
    """Not an SDP we can read."""


def media_of(sdp: str) -> list[Media]:
    """The m-sections of an SDP, with their mids, in order."""
    if not sdp.startswith("v=0"):
        raise SdpError("SDP must start with v=0")
    sections: list[Media] = []
    kind: str | None = None
    mid: str | None = None
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if kind is not None:
                sections.append(Media(kind, mid if mid is not None else str(len(sections))))
            parts = line[2:].split()
            if not parts:
                raise SdpError("empty m= line")
            kind, mid = parts[0], None
        elif line.startswith("a=mid:") and kind is not None:
            mid = line[len("a=mid:") :]
    if kind is not None:
        sections.append(Media(kind, mid if mid is not None else str(len(sections))))
    return sections


def _session(origin: str, mids: list[str]) -> list[str]:
    return [
        "v=0",
        f"o=- {origin} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        f"a=group:BUNDLE {' '.join(mids)}",
        "a=ice-lite",
    ]


def _section(media: Media, direction: str, setup: str) -> list[str]:
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
        f"a=ice-ufrag:{secrets.token_hex(4)}",
        f"a=ice-pwd:{secrets.token_hex(12)}",
        "a=fingerprint:sha-256 " + ":".join(f"{b:02X}" for b in secrets.token_bytes(32)),
        f"a=setup:{setup}",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 3478 typ host",
        "a=end-of-candidates",
    ]
    if media.kind == "application":
        return [*lines, "a=sctp-port:5000"]
    codec = "a=rtpmap:111 opus/48000/2" if media.kind == "audio" else "a=rtpmap:96 VP8/90000"
    lines += [f"a={direction}", "a=rtcp-mux", codec]
    if media.track:
        lines.append(f"a=msid:{media.track} {media.track}")
    return lines


def answer(offer: list[Media]) -> str:
    """The SFU's answer to a client's offer: receive what the client sends."""
    lines = _session(secrets.token_hex(8), [m.mid for m in offer])
    for media in offer:
        lines += _section(media, "recvonly", "passive")
    return "\r\n".join(lines) + "\r\n"


def offer(media: list[Media]) -> str:
    """The SFU's offer to a client pulling tracks: send them."""
    lines = _session(secrets.token_hex(8), [m.mid for m in media])
    for section in media:
        lines += _section(section, "sendonly", "actpass")
    return "\r\n".join(lines) + "\r\n"
