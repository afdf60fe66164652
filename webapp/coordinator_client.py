"""The webapp's client for the coordinator's chat API (real HTTP, even in dev mode)."""

import logging
from typing import Any

import httpx

from farm_protocol.chat import ThreadSnapshot

log = logging.getLogger(__name__)

SESSION_HEADER = "X-Farm-Session"
CLIENT_HEADER = "X-Farm-Client"  # the browser's address: new identities are limited by it


class CoordinatorUnavailable(Exception):
    """The coordinator did not answer."""


class CoordinatorClient:
    def __init__(self, base_url: str, service_token: str) -> None:
        self._programmatic = base_url.rstrip("/") + "/api/v1/programmatic"
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/api/v1/chat",
            headers={"Authorization": f"Bearer {service_token}"},
            timeout=httpx.Timeout(10.0, connect=3.0),
        )

    async def request(
        self,
        method: str,
        path: str,
        session: str,
        body: Any = None,
        *,
        client: str | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        headers = {SESSION_HEADER: session}
        if client:
            headers[CLIENT_HEADER] = client
        try:
            return await self._http.request(method, path, json=body, headers=headers, params=params)
        except httpx.HTTPError as exc:
            log.warning("coordinator unreachable: %s", exc)
            raise CoordinatorUnavailable(str(exc)) from exc

    async def programmatic(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """The coordinator's API for programmatic clients (OpenAI-compatible requests)."""
        try:
            return await self._http.request(method, self._programmatic + path, json=body)
        except httpx.HTTPError as exc:
            log.warning("coordinator unreachable: %s", exc)
            raise CoordinatorUnavailable(str(exc)) from exc

    async def snapshot(self, thread_id: str, session: str) -> ThreadSnapshot | None:
        response = await self.request("GET", f"/threads/{thread_id}", session)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return ThreadSnapshot.model_validate_json(response.content)

    async def close(self) -> None:
        await self._http.aclose()
