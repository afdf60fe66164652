"""What both farm APIs for programs (OpenAI's at /v1, Ollama's at /api) share: a
request's key checked and its reply queued with the coordinator, then followed as it
streams (``Follow``), and cancelled if its client hangs up."""

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiomqtt import MqttError
from quart import Blueprint, Response, request

from farm_protocol.browser import BrowserEvent, ChunkEvent, MessageChanged
from farm_protocol.chat import MessageState
from farm_protocol.ids import new_job_id
from farm_protocol.payloads import Generation
from farm_runtime.chunks import ChunkSequence
from webapp.bridge import RESYNC, Bridge, Subscriber
from webapp.coordinator_client import CoordinatorClient, CoordinatorUnavailable, Upstream

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 900.0  # longer than any reply deadline the coordinator enforces
UNSTARTED_RETRY_S = 30  # Retry-After for a request that ended without starting
# The code of a 503 when no coordinator answers: not "server_busy", which tells a client
# the farm is overloaded; this one says the service is down, so try another address.
UNAVAILABLE = "service_unavailable"


class Refusal(Exception):
    """The farm did not take the request: an HTTP status, why, and perhaps when to come
    back and a machine-readable reason (the coordinator's: no_worker, queue_full, ...)."""

    def __init__(
        self, status: int, message: str, retry_after: str | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.reason = reason


def _down() -> Refusal:
    return Refusal(503, "the farm is unavailable; try again shortly", "5", UNAVAILABLE)


def bearer_key() -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ").strip()


def _refusal(response: Upstream) -> Refusal:
    try:
        body = response.json()
        message, reason = body.get("error", response.text), body.get("code")
    except (ValueError, AttributeError):
        message, reason = response.text, None
    retry = response.headers.get("Retry-After")
    return Refusal(response.status_code, str(message), retry, str(reason) if reason else None)


@dataclass(frozen=True, slots=True)
class Farm:
    """The webapp's side of the APIs for programs."""

    bridge: Bridge
    coordinator: CoordinatorClient

    async def fleet(self) -> dict[str, Any]:
        """What the fleet serves (``FleetModels``), for a client with a valid key."""
        try:
            checked = await self._check_key()
            if checked.status_code != 200:
                raise _refusal(checked)
            return dict((await self.coordinator.programmatic("GET", "/models")).json())
        except CoordinatorUnavailable:
            raise _down() from None

    async def key_refusal(self) -> Refusal | None:
        """The 401 for a request whose key is missing or not a valid one, else None (the
        coordinator unreachable included). Asked before a malformed request is answered
        400: a client with a wrong key hears that first, as from OpenAI."""
        try:
            checked = await self._check_key()
        except CoordinatorUnavailable:
            return None
        return _refusal(checked) if checked.status_code == 401 else None

    async def _check_key(self) -> Upstream:
        return await self.coordinator.programmatic("POST", "/keys/check", {"api_key": bearer_key()})

    async def queue(self, model: str, generation: Generation) -> "Follow":
        """Queue a reply for the key's request; follow it from before it is queued."""
        thread_id = new_job_id()  # the reply's thread: watched before the request is queued
        try:
            sub = await self.bridge.subscribe(thread_id)
        except MqttError:
            raise _down() from None
        body = generation.model_dump(mode="json", exclude_defaults=True)
        body |= {"api_key": bearer_key(), "model": model, "thread_id": thread_id}
        try:
            queued = await self.coordinator.programmatic("POST", "/completions", body)
        except CoordinatorUnavailable:
            self.bridge.unsubscribe(sub)
            raise _down() from None
        if queued.status_code != 201:
            self.bridge.unsubscribe(sub)
            raise _refusal(queued)
        reply = queued.json()["reply"]
        return Follow(self.bridge, self.coordinator, sub, reply, bearer_key())


# (method, rule, view): a route of an API; its view takes the API's state first
Route = tuple[str, str, Callable[..., Awaitable[Response]]]


def add_routes(bp: Blueprint, routes: Sequence[Route], api: object) -> None:
    """Each (method, rule, view) on ``bp``, its view called with ``api`` first."""
    for method, rule, view in routes:
        bp.add_url_rule(rule, view.__name__, functools.partial(view, api), methods=[method])


def failure(view: dict[str, Any]) -> tuple[int, str, str]:
    """How a reply that did not succeed ends for an API client: (status, message, code).

    One that never started (timed out in the queue, or no worker serves its model any
    more) is the farm being busy: 503, come back later. One that timed out while
    generating is 504; one that failed on its worker is 502."""
    message = f"the reply {view['state']}: {view.get('error') or ''}".strip(": ")
    if view["state"] == MessageState.TIMED_OUT.value:
        if view.get("content_seq", -1) < 0 and not view.get("content"):
            return 503, message, "server_busy"
        return 504, message, "timeout"
    return 502, message, "upstream_error"


class Follow:
    """One reply's text as it streams: catch-up from the bridge's buffer, then live.
    ``sub`` watches the reply's thread since before the request was queued (the webapp
    chose the thread's id), so none of its events is missed; it is released at the end.

    If the client goes away before the reply ends (its connection closes, and Quart
    cancels the request), the job is cancelled: the worker's slot and the key's
    concurrency are freed at once instead of when the reply would have ended."""

    def __init__(
        self,
        bridge: Bridge,
        coordinator: CoordinatorClient,
        sub: Subscriber,
        reply: dict[str, Any],
        api_key: str,
    ) -> None:
        self.bridge = bridge
        self.coordinator = coordinator
        self.sub = sub
        self.job_id = str(reply["job_id"])
        self.message_id = str(reply["message_id"])
        self.model = str(reply["model"])
        self.api_key = api_key
        self.ended = False

    async def events(self, tick_s: float = IDLE_TIMEOUT_S) -> AsyncIterator[tuple[str, Any]]:
        """("text", str) pieces in order, ("idle", None) after each ``tick_s`` without
        any, then one ("end", message view dict)."""
        sub = self.sub
        attempt, order = 0, ChunkSequence()
        pending: list[BrowserEvent | None] = []
        idle_s = 0.0
        try:
            self.bridge.watch_job(self.job_id, sub.thread_id)
            pending += self.bridge.chunks_after(
                self.job_id, self.bridge.attempt_of(self.job_id), -1
            )
            while True:
                for event in pending:
                    if event is RESYNC:
                        # this webapp lost the broker a moment: listen afresh (the
                        # final message carries the whole text, for what was missed)
                        self.bridge.unsubscribe(sub)
                        sub = self.sub = await self.bridge.subscribe(sub.thread_id)
                    elif isinstance(event, ChunkEvent) and event.job_id == self.job_id:
                        if event.attempt > attempt:  # a new attempt starts from empty
                            attempt, order = event.attempt, ChunkSequence()
                        if event.attempt == attempt:
                            for text in order.add(event.seq, event.text) or ():
                                yield "text", text
                    elif isinstance(event, MessageChanged):
                        view = event.message
                        if view.message_id == self.message_id and view.state.final:
                            self.ended = True
                            yield "end", view.model_dump(mode="json")
                            return
                try:
                    pending = [await sub.next(tick_s)]
                    idle_s = 0.0
                except TimeoutError:
                    idle_s += tick_s
                    if idle_s >= IDLE_TIMEOUT_S:
                        raise
                    pending = []
                    yield "idle", None
        finally:
            self.bridge.unsubscribe(self.sub)
            if not self.ended:
                self._cancel_later()

    def _cancel_later(self) -> None:
        """Cancel the job in a task of its own (this one is being cancelled)."""
        task = asyncio.create_task(self._cancel(), name=f"cancel {self.job_id}")
        _CANCELLING.add(task)
        task.add_done_callback(_CANCELLING.discard)

    async def _cancel(self) -> None:
        body = {"api_key": self.api_key, "job_id": self.job_id}
        try:
            answer = await self.coordinator.programmatic("POST", "/cancel", body)
        except CoordinatorUnavailable as exc:
            log.warning("could not cancel job %s after its client left: %s", self.job_id, exc)
            return
        log.info("job %s: its client left (%s)", self.job_id, answer.text.strip())


_CANCELLING: set[asyncio.Task[None]] = set()
