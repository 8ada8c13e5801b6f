"""ICE servers for clients: Cloudflare's STUN, plus short-lived TURN credentials
when a Calls TURN key is configured (cached, refreshed before they expire)."""

import asyncio
import logging
import time
from typing import Any

import httpx
import msgspec

from edge.settings import EdgeSettings

log = logging.getLogger(__name__)

IceServer = dict[str, Any]
_REFRESH_AT = 0.5
"""Fetch new credentials once half of their lifetime has passed."""


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


class IceServers:
    def __init__(self, settings: EdgeSettings, http: httpx.AsyncClient | None) -> None:
        self._settings = settings
        self._http = http
        urls = list(settings.stun_urls)
        self._stun: list[IceServer] = (
            [{"urls": urls[0] if len(urls) == 1 else urls}] if urls else []
        )
        self._cached: list[IceServer] | None = None
        self._refresh_after = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> list[IceServer]:
        """STUN only, or Cloudflare's STUN and TURN servers with credentials."""
        if not self._settings.turn_configured or self._http is None:
            return self._stun
        if self._cached is not None and time.monotonic() < self._refresh_after:
            return self._cached
        async with self._lock:
            if self._cached is None or time.monotonic() >= self._refresh_after:
                await self._refresh()
        return self._cached or self._stun

    async def _refresh(self) -> None:
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
        except (httpx.HTTPError, ValueError, msgspec.DecodeError) as e:
            # Keep serving what we have (or STUN): a call without TURN may still work.
            log.warning("TURN credentials unavailable: %s", type(e).__name__)
            self._refresh_after = time.monotonic() + 10
            return
        self._cached = _without_port_53(generated.iceServers)
        self._refresh_after = time.monotonic() + settings.turn_ttl * _REFRESH_AT
