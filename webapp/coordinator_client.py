"""The webapp's client for the coordinator's chat API (real HTTP, even in dev mode).

aiohttp, not httpx: every chat message and every OpenAI-API request crosses this hop.
Measured against the coordinator's own server stack (hypercorn and Quart, another
process, a 150-byte JSON body each way): httpx spent 1.5-1.6 ms of CPU per request
and answered in 2.2 ms, aiohttp 0.43 ms and 1.2 ms. In the webapp, under load, this
call had been a third of all its CPU (py-spy, docs/PERFORMANCE.md)."""

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from farm_protocol.chat import CLIENT_HEADER, SESSION_HEADER, ThreadSnapshot

log = logging.getLogger(__name__)

TIMEOUT = aiohttp.ClientTimeout(total=10.0, sock_connect=3.0)
HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=2.0)
CHAT = "/api/v1/chat"
PROGRAMMATIC = "/api/v1/programmatic"


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
    """The coordinators' chat API, spread over every coordinator this webapp knows.

    Requests go round-robin to the coordinators that answer. One that cannot be reached
    (refused or timed-out connection) is passed over at once, for the next, and left out
    until it answers its health check again (``watch``, every second): when one dies its
    requests go to the others within a second, and a browser notices at most a pause. A
    request that reached a coordinator and lost its answer is retried elsewhere only if
    it changes nothing (GET): a message sent twice would be a message twice."""

    def __init__(self, base_urls: str | list[str], service_token: str) -> None:
        urls = base_urls.split(",") if isinstance(base_urls, str) else base_urls
        self.bases = [u.strip().rstrip("/") for u in urls if u.strip()]
        if not self.bases:
            raise ValueError("no coordinator URL given")
        self._auth = {"Authorization": f"Bearer {service_token}"}
        self._session: aiohttp.ClientSession | None = None  # made inside the event loop
        self._down: set[str] = set()
        self._turn = 0

    def live(self) -> list[str]:
        """The coordinators that answered last time they were asked."""
        return [b for b in self.bases if b not in self._down]

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._auth, timeout=TIMEOUT)
        return self._session

    def _order(self) -> list[str]:
        """Live coordinators first, starting from the next in turn; the others last (one
        of them may be back before its health check says so)."""
        self._turn = (self._turn + 1) % len(self.bases)
        turn = self.bases[self._turn :] + self.bases[: self._turn]
        return [b for b in turn if b not in self._down] + [b for b in turn if b in self._down]

    async def _send(
        self,
        method: str,
        path: str,
        body: Any,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Upstream:
        failure = "no coordinator"
        for base in self._order():
            try:
                async with self._http().request(
                    method, base + path, json=body, headers=headers, params=params
                ) as response:
                    answer = Upstream(response.status, await response.read(), response.headers)
            except aiohttp.ClientConnectorError as exc:  # nothing was sent
                failure = self._lost(base, exc)
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = self._lost(base, exc)
                if method == "GET":
                    continue
                raise CoordinatorUnavailable(failure) from exc
            self._down.discard(base)
            return answer
        raise CoordinatorUnavailable(failure)

    def _lost(self, base: str, exc: BaseException) -> str:
        detail = f"{base}: {str(exc) or type(exc).__name__}"
        if base not in self._down:
            log.warning("coordinator unreachable: %s", detail)
        self._down.add(base)
        return detail

    async def watch(self, interval_s: float = 1.0) -> None:
        """Ask every coordinator's health check each ``interval_s``: those that answer
        200 take requests, the others do not."""
        while True:
            await asyncio.gather(*(self._check(base) for base in self.bases))
            await asyncio.sleep(interval_s)

    async def _check(self, base: str) -> None:
        try:
            async with self._http().get(base + "/healthz", timeout=HEALTH_TIMEOUT) as response:
                healthy = response.status == 200
                await response.read()
        except (aiohttp.ClientError, TimeoutError):
            healthy = False
        if healthy and base in self._down:
            log.info("coordinator %s is back", base)
            self._down.discard(base)
        elif not healthy and base not in self._down:
            log.warning("coordinator %s failed its health check", base)
            self._down.add(base)

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
        return await self._send(method, CHAT + path, body, headers, params)

    async def programmatic(self, method: str, path: str, body: Any = None) -> Upstream:
        """The coordinator's API for programmatic clients (OpenAI-compatible requests)."""
        return await self._send(method, PROGRAMMATIC + path, body)

    async def snapshot(self, thread_id: str, session: str) -> ThreadSnapshot | None:
        response = await self.request("GET", f"/threads/{thread_id}", session)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return ThreadSnapshot.model_validate_json(response.content)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
