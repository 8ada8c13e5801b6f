"""ICE servers for clients: the configured STUN servers, plus TURN credentials
when a Calls TURN key is configured.

TURN credentials are made for one participant at a time and live
``TURN_CREDENTIALS_TTL`` seconds (one hour by default): the join answer carries
the first, and a participant still in the room renews them through
``/cloudflare/ice-servers`` (the web client does, at half their life, with
``RTCPeerConnection.setConfiguration``). Someone who left, or who only ever
asked for a token, holds a credential that soon stops working. Each
participant's credentials are reused until half their life has passed, so a
client asking again and again costs one upstream call per half-life; the cache
is bounded.
"""

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from edge.settings import EdgeSettings

log = logging.getLogger(__name__)

IceServer = dict[str, Any]
_REFRESH_AT = 0.5
"""Make new credentials once half of their lifetime has passed."""
CACHED_PARTICIPANTS = 10_000
"""Participants whose credentials an edge keeps for reuse (the oldest go first)."""
_RETRY_AFTER = 10.0
"""Seconds to serve STUN only after the TURN API failed, before asking again."""


class _Generated(msgspec.Struct):
    iceServers: list[dict[str, Any]]


def _without_port_53(servers: list[IceServer]) -> list[IceServer]:
    """Browsers block port 53: drop such URLs (and servers left without any)."""
    kept = []
    for server in servers:
        urls = server.get("urls")
        listed = [urls] if isinstance(urls, str) else list(urls or [])
        usable = [u for u in listed if isinstance(u, str) and _port(u) != "53"]
        if usable:
            kept.append({**server, "urls": usable})
    return kept


def _port(url: str) -> str:
    """``turn:host:53?transport=udp`` -> ``53``."""
    return url.split("?", 1)[0].rsplit(":", 1)[-1]


@dataclass(frozen=True, slots=True)
class IceGrant:
    servers: list[IceServer]
    expires_in: int | None = None
    """Seconds the TURN credentials among ``servers`` still live (``None``: STUN only)."""


class IceServers:
    def __init__(self, settings: EdgeSettings, http: httpx.AsyncClient | None) -> None:
        self._settings = settings
        self._http = http
        urls = list(settings.stun_urls)
        self._stun: list[IceServer] = (
            [{"urls": urls[0] if len(urls) == 1 else urls}] if urls else []
        )
        self._cache: OrderedDict[str, tuple[float, list[IceServer]]] = OrderedDict()
        """Participant id -> (when they were made, monotonic; its servers)."""
        self._failed_until = 0.0

    async def get(self, participant_id: str | None) -> IceGrant:
        """STUN only, or STUN and TURN with credentials for this participant
        (``None``: the open legacy proxy, one shared set)."""
        if not self._settings.turn_configured or self._http is None:
            return IceGrant(self._stun)
        ttl = self._settings.turn_ttl
        key = participant_id or ""
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < ttl * _REFRESH_AT:
            return IceGrant(cached[1], int(ttl - (now - cached[0])))
        if now < self._failed_until:
            return self._stale(cached, now)
        servers = await self._generate()
        if servers is None:
            self._failed_until = now + _RETRY_AFTER
            return self._stale(cached, now)
        self._cache[key] = (now, servers)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHED_PARTICIPANTS:
            self._cache.popitem(last=False)
        return IceGrant(servers, ttl)

    def _stale(self, cached: tuple[float, list[IceServer]] | None, now: float) -> IceGrant:
        """What to give while the TURN API fails: what we have, or STUN."""
        if cached is None or now - cached[0] >= self._settings.turn_ttl:
            return IceGrant(self._stun)
        return IceGrant(cached[1], int(self._settings.turn_ttl - (now - cached[0])))

    async def _generate(self) -> list[IceServer] | None:
        settings = self._settings
        assert self._http is not None
        url = (
            f"{settings.calls_api_url}/turn/keys/{settings.turn_key_id}"
            "/credentials/generate-ice-servers"
        )
        try:
            response = await self._http.post(
                url,
                json={"ttl": settings.turn_ttl},
                headers={"Authorization": f"Bearer {settings.turn_key_token}"},
            )
            if response.status_code != 201:
                raise ValueError(f"status {response.status_code}")
            generated = msgspec.json.decode(response.content, type=_Generated)
        except (httpx.HTTPError, ValueError, msgspec.DecodeError, RecursionError) as e:
            # Serve what we have (or STUN): a call without TURN may still work.
            log.warning("TURN credentials unavailable: %s", type(e).__name__)
            return None
        return _without_port_53(generated.iceServers)
