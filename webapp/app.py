"""The webapp's HTTP routes and the per-thread websocket."""

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quart import Quart, Response, g, request, send_from_directory, websocket

from farm_protocol.chat import MessageView, ThreadSnapshot
from farm_protocol.errors import TopicError
from farm_protocol.ids import check_id
from farm_runtime.http_serving import request_json
from farm_runtime.queues import get_within
from webapp.bridge import Bridge, Subscriber
from webapp.coordinator_client import CoordinatorClient, CoordinatorUnavailable
from webapp.openai_api import create_openai_blueprint, openai_error
from webapp.settings import WebappSettings

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "farm_session"
RELOAD_CLOSE_CODE = 4000  # "you fell behind: reconnect and resync"
BRIDGE_WAIT_S = 5.0  # how long a new websocket waits for the bridge's MQTT subscription


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status=status, content_type="application/json")


CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def create_app(settings: WebappSettings, bridge: Bridge, coordinator: CoordinatorClient) -> Quart:
    app = Quart("webapp", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes

    @app.before_request
    async def _session() -> None:
        if request.path.startswith("/v1/"):
            # An API client is known by its key: no browser session, no cookie.
            g.new_session, g.session = False, ""
            return
        token = request.cookies.get(COOKIE, "")
        g.new_session = len(token) < 32
        g.session = secrets.token_urlsafe(32) if g.new_session else token

    @app.after_request
    async def _set_cookie(response: Response) -> Response:
        if getattr(g, "new_session", False):
            response.set_cookie(
                COOKIE,
                g.session,
                max_age=365 * 86400,
                httponly=True,
                samesite="Lax",
                secure=settings.cookie_secure,
            )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.get("/")
    @app.get("/t/<thread_id>")
    async def index(thread_id: str | None = None) -> Response:
        response = await send_from_directory(STATIC, "index.html")
        response.headers["Content-Security-Policy"] = CSP
        return response

    @app.get("/farm")
    async def farm_page() -> Response:
        response = await send_from_directory(STATIC, "farm.html")
        response.headers["Content-Security-Policy"] = CSP
        return response

    @app.get("/api/farm")
    async def farm() -> Response:
        return await forward("GET", "/farm")

    static_files = {path.name for path in STATIC.iterdir() if path.is_file()}

    @app.get("/static/<path:name>")
    async def static_file(name: str) -> Response:
        if name not in static_files:  # no file system look-up for whatever is asked
            return _error(404, "no such file")
        return await send_from_directory(STATIC, name)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def forward(method: str, path: str, body: Any = None) -> Response:
        try:
            upstream = await coordinator.request(
                method,
                path,
                g.session,
                body,
                client=client_address(settings.forwarded_for_hops),
                params=dict(request.args) or None,
            )
        except CoordinatorUnavailable:
            return _error(503, "the chat service is unavailable; try again shortly")
        response = Response(
            upstream.content, status=upstream.status_code, content_type="application/json"
        )
        if "Retry-After" in upstream.headers:
            response.headers["Retry-After"] = upstream.headers["Retry-After"]
        return response

    async def json_body() -> Any:
        data = await request_json(request)
        return data if isinstance(data, dict) else {}

    @app.get("/api/me")
    async def me() -> Response:
        return await forward("GET", "/me")

    @app.post("/api/me/name")
    async def rename() -> Response:
        return await forward("POST", "/me/name")

    @app.get("/api/models")
    async def models() -> Response:
        return await forward("GET", "/models")

    @app.get("/api/threads")
    async def threads() -> Response:
        return await forward("GET", "/threads")

    @app.post("/api/threads")
    async def create_thread() -> Response:
        return await forward("POST", "/threads", await json_body())

    @app.get("/api/threads/<thread_id>")
    async def thread(thread_id: str) -> Response:
        return await forward("GET", f"/threads/{_id(thread_id)}")

    @app.get("/api/threads/<thread_id>/messages")
    async def older(thread_id: str) -> Response:
        return await forward("GET", f"/threads/{_id(thread_id)}/messages")

    @app.post("/api/threads/<thread_id>/<action>")
    async def membership(thread_id: str, action: str) -> Response:
        if action not in ("join", "leave"):
            return _error(404, f"no action {action!r}: use join or leave")
        return await forward("POST", f"/threads/{_id(thread_id)}/{action}")

    @app.post("/api/threads/<thread_id>/messages")
    async def send(thread_id: str) -> Response:
        return await forward("POST", f"/threads/{_id(thread_id)}/messages", await json_body())

    @app.post("/api/threads/<thread_id>/messages/<message_id>/<action>")
    async def message_action(thread_id: str, message_id: str, action: str) -> Response:
        if action not in ("stop", "retry"):
            return _error(404, f"no action {action!r}: use stop or retry")
        path = f"/threads/{_id(thread_id)}/messages/{_id(message_id)}/{action}"
        return await forward("POST", path)

    @app.errorhandler(TopicError)
    async def _bad_id(exc: TopicError) -> Response:
        return _error(404, str(exc))

    def api_error(status: int, message: str, code: str | None = None) -> Response:
        """JSON errors for the APIs (OpenAI's shape under /v1), whatever went wrong."""
        if request.path.startswith("/v1/"):
            return openai_error(status, message, code=code)
        return _error(status, message)

    @app.errorhandler(413)
    async def _too_large(_: Exception) -> Response:
        # The body was refused unread, so the server closes the connection after this
        # answer: saying so keeps the client from sending its next request on it (a
        # "Server disconnected" for that request, now and then).
        response = api_error(413, f"request larger than {settings.max_request_bytes} bytes")
        response.headers["Connection"] = "close"
        return response

    @app.errorhandler(404)
    async def _no_route(_: Exception) -> Response:
        return api_error(404, f"nothing at {request.path[:200]}", code="unknown_url")

    @app.errorhandler(405)
    async def _wrong_method(_: Exception) -> Response:
        return api_error(405, f"{request.method} is not allowed on {request.path[:200]}")

    app.register_blueprint(create_openai_blueprint(bridge, coordinator))

    @app.websocket("/ws/threads/<thread_id>")
    async def thread_socket(thread_id: str) -> None:
        # Websockets skip before_request: the session comes from the handshake's cookie
        # (a browser without one is an anonymous viewer with a throwaway identity).
        session = websocket.cookies.get(COOKIE) or secrets.token_urlsafe(32)
        await ThreadSocket(bridge, coordinator, _id(thread_id), session).serve()

    return app


def client_address(hops: int) -> str | None:
    """The browser's address: the peer's, or behind ``hops`` trusted proxies the entry
    they added to X-Forwarded-For (earlier entries are the client's own claims)."""
    if hops:
        chain = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",")]
        chain = [a for a in chain if a]
        if len(chain) >= hops:
            return chain[-hops]
    return request.remote_addr


def _id(thread_id: str) -> str:
    return check_id(thread_id, "thread id")


@dataclass(slots=True)
class _Sent:
    """The chunks of one job attempt a browser has: every seq up to ``floor``, and the
    ones in ``above`` (chunks can arrive out of order: a replay fills a gap late)."""

    attempt: int
    floor: int = -1
    above: set[int] = field(default_factory=set)

    def has(self, seq: int) -> bool:
        return seq <= self.floor or seq in self.above

    def add(self, seq: int) -> None:
        self.above.add(seq)
        self._close_gaps()

    def raise_floor(self, seq: int) -> None:
        self.floor = max(self.floor, seq)
        self.above = {s for s in self.above if s > self.floor}
        self._close_gaps()

    def _close_gaps(self) -> None:
        while self.floor + 1 in self.above:
            self.floor += 1
            self.above.discard(self.floor)


class ThreadSocket:
    """One browser watching one thread: the snapshot, then live events, with no gap and
    no duplicate (chunks are filtered by sequence number per job attempt)."""

    def __init__(
        self, bridge: Bridge, coordinator: CoordinatorClient, thread_id: str, session: str
    ) -> None:
        self.bridge = bridge
        self.coordinator = coordinator
        self.thread_id = thread_id
        self.session = session
        self.sent: dict[str, _Sent] = {}  # job_id -> the chunks of its attempt sent

    async def serve(self) -> None:
        try:
            await asyncio.wait_for(self.bridge.ready.wait(), timeout=BRIDGE_WAIT_S)
        except TimeoutError:
            await websocket.close(1013, "live updates are unavailable; retrying")
            return
        sub = self.bridge.subscribe(self.thread_id)  # before the snapshot: nothing is missed
        try:
            snapshot = await self._snapshot()
            if snapshot is None:
                await websocket.close(4004, "no such thread")
                return
            await self._send({"type": "snapshot", **snapshot.model_dump(mode="json")})
            for message in snapshot.messages:
                await self._catch_up(message)
            await self._live(sub)
        finally:
            self.bridge.unsubscribe(sub)

    async def _snapshot(self) -> ThreadSnapshot | None:
        try:
            return await self.coordinator.snapshot(self.thread_id, self.session)
        except CoordinatorUnavailable:
            await websocket.close(1013, "the chat service is unavailable")
            return None

    async def _live(self, sub: Subscriber) -> None:
        while True:
            try:
                event = await get_within(sub.queue, 1.0)
            except TimeoutError:
                if sub.lagging:
                    await websocket.close(RELOAD_CLOSE_CODE, "fell behind")
                    return
                continue
            if event["type"] == "chunk":
                await self._chunk(event)
            elif event["type"] == "members":
                await self._send(event)
            else:
                await self._send(event)
                message = MessageView.model_validate(event["message"])
                await self._catch_up(message)
            if sub.lagging and sub.queue.empty():
                await websocket.close(RELOAD_CLOSE_CODE, "fell behind")
                return

    async def _catch_up(self, message: MessageView) -> None:
        """Send the bridge's buffered chunks this browser has not seen for ``message``."""
        if not message.job_id or message.state.final:
            return
        self.bridge.watch_job(message.job_id, self.thread_id)
        if message.worker_id and message.attempt:
            self.bridge.learn_holder(message.job_id, message.worker_id, message.attempt)
        attempt = self.bridge.attempt_of(message.job_id)
        sent = self.sent.get(message.job_id)
        if sent is None or sent.attempt != attempt:
            sent = self.sent[message.job_id] = _Sent(attempt)
        if message.content_seq >= 0:
            sent.raise_floor(message.content_seq)  # those are in the message's text
        for event in self.bridge.chunks_after(message.job_id, attempt, sent.floor):
            await self._chunk(event)

    async def _chunk(self, event: dict[str, Any]) -> None:
        job_id, attempt, seq = event["job_id"], event["attempt"], event["seq"]
        sent = self.sent.get(job_id)
        if sent is None or attempt > sent.attempt:
            sent = self.sent[job_id] = _Sent(attempt)
        if attempt < sent.attempt or sent.has(seq):
            return
        sent.add(seq)
        await self._send(event)

    async def _send(self, event: dict[str, Any]) -> None:
        await websocket.send(json.dumps(event))
