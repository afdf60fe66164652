"""The webapp's client for the coordinator's chat API (real HTTP, even in dev mode).

aiohttp, not httpx: every chat message and every OpenAI-API request crosses this hop.
Measured against the coordinator's own server stack (hypercorn and Quart, another
process, a 150-byte JSON body each way): httpx spent 1.5-1.6 ms of CPU per request
and answered in 2.2 ms, aiohttp 0.43 ms and 1.2 ms. In the webapp, under load, this
call had been a third of all its CPU (py-spy, docs/PERFORMANCE.md)."""

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from farm_protocol.chat import CLIENT_HEADER, SESSION_HEADER, ThreadSnapshot

log = logging.getLogger(__name__)

TIMEOUT = aiohttp.ClientTimeout(total=10.0, sock_connect=3.0)


class CoordinatorUnavailable(Exception):
    """The coordinator did not answer."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """The coordinator's answer, read whole."""

    status_code: int
    content: bytes
    headers: Mapping[str, str]  # case-insensitive

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise CoordinatorUnavailable(f"the coordinator answered {self.status_code}")


class CoordinatorClient:
    def __init__(self, base_url: str, service_token: str) -> None:
        base = base_url.rstrip("/")
        self._chat = base + "/api/v1/chat"
        self._programmatic = base + "/api/v1/programmatic"
        self._auth = {"Authorization": f"Bearer {service_token}"}
        self._session: aiohttp.ClientSession | None = None  # made inside the event loop

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._auth, timeout=TIMEOUT)
        return self._session

    async def _send(
        self,
        method: str,
        url: str,
        body: Any,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Upstream:
        try:
            async with self._http().request(
                method, url, json=body, headers=headers, params=params
            ) as response:
                return Upstream(response.status, await response.read(), response.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            detail = str(exc) or type(exc).__name__
            log.warning("coordinator unreachable: %s", detail)
            raise CoordinatorUnavailable(detail) from exc

    async def request(
        self,
        method: str,
        path: str,
        session: str,
        body: Any = None,
        *,
        client: str | None = None,
        params: dict[str, str] | None = None,
    ) -> Upstream:
        headers = {SESSION_HEADER: session}
        if client:
            headers[CLIENT_HEADER] = client
        return await self._send(method, self._chat + path, body, headers, params)

    async def programmatic(self, method: str, path: str, body: Any = None) -> Upstream:
        """The coordinator's API for programmatic clients (OpenAI-compatible requests)."""
        return await self._send(method, self._programmatic + path, body)

    async def snapshot(self, thread_id: str, session: str) -> ThreadSnapshot | None:
        response = await self.request("GET", f"/threads/{thread_id}", session)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return ThreadSnapshot.model_validate_json(response.content)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
