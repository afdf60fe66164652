"""The OpenAI-compatible API: ``POST /v1/chat/completions`` (streamed as server-sent
events, or whole) and ``GET /v1/models``, for existing OpenAI clients and chat front ends.

A request carries the client's API key as its bearer token (keys are made by an admin:
``llama-farm api-keys add`` or the admin API). The coordinator checks it, applies the
key's limit and the farm's load shedding, and queues the request; the reply streams here
through the same MQTT bridge the browsers use. Errors come in OpenAI's shape, with a
``Retry-After`` when the farm is busy (429) or overloaded (503).
"""

import functools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from aiomqtt import MqttError
from quart import Blueprint, Response, request

from farm_protocol.browser import BrowserEvent, ChunkEvent, MessageChanged
from farm_protocol.chat import MessageState
from farm_protocol.ids import new_job_id
from farm_runtime.chunks import ChunkSequence
from farm_runtime.http_serving import request_json
from webapp.bridge import RESYNC, Bridge, Subscriber
from webapp.coordinator_client import CoordinatorClient, CoordinatorUnavailable, Upstream

# The code of a 503 when no coordinator answers: not "server_busy", which tells a client
# the farm is overloaded; this one says the service is down, so try another address.
UNAVAILABLE = "service_unavailable"
_IDLE_TIMEOUT_S = 900.0  # longer than any reply deadline the coordinator enforces
UNSTARTED_RETRY_S = 30  # Retry-After for a request that ended without starting
_ERROR_KINDS = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    405: ("invalid_request_error", None),
    409: ("invalid_request_error", None),
    413: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    502: ("server_error", None),
    503: ("server_error", "server_busy"),
    504: ("server_error", "timeout"),
}


def openai_error(
    status: int, message: str, retry_after: str | None = None, code: str | None = None
) -> Response:
    kind, usual_code = _ERROR_KINDS.get(status, ("server_error", None))
    code = code or usual_code
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    response = Response(json.dumps(body), status=status, content_type="application/json")
    if retry_after:
        response.headers["Retry-After"] = retry_after
    return response


def _key() -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ").strip()


class Follow:
    """One reply's text as it streams: catch-up from the bridge's buffer, then live.
    ``sub`` watches the reply's thread since before the request was queued (the webapp
    chose the thread's id), so none of its events is missed; it is released at the end."""

    def __init__(self, bridge: Bridge, sub: Subscriber, job_id: str, message_id: str) -> None:
        self.bridge = bridge
        self.sub = sub
        self.job_id = job_id
        self.message_id = message_id

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """("text", str) pieces in order, then one ("end", message view dict)."""
        sub = self.sub
        attempt, order = 0, ChunkSequence()
        pending: list[BrowserEvent | None] = []
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
                            yield "end", view.model_dump(mode="json")
                            return
                pending = [await sub.next(_IDLE_TIMEOUT_S)]
        finally:
            self.bridge.unsubscribe(self.sub)


# The coordinator's reasons for a 503, as OpenAI clients know them.
_BUSY_CODES = {"no_worker": "model_not_available"}


async def _upstream_error(response: Upstream) -> Response:
    try:
        body = response.json()
        message, reason = body.get("error", response.text), body.get("code")
    except (ValueError, AttributeError):
        message, reason = response.text, None
    code = _BUSY_CODES.get(str(reason)) if reason else None
    retry = response.headers.get("Retry-After")
    return openai_error(response.status_code, str(message), retry, code=code)


async def models(bridge: Bridge, coordinator: CoordinatorClient) -> Response:
    """``GET /v1/models``: what the fleet serves, for a client with a valid key."""
    try:
        checked = await coordinator.programmatic("POST", "/keys/check", {"api_key": _key()})
        if checked.status_code != 200:
            return await _upstream_error(checked)
        fleet = (await coordinator.programmatic("GET", "/models")).json()
    except CoordinatorUnavailable:
        return openai_error(503, "the farm is unavailable; try again shortly", "5", UNAVAILABLE)
    data = [
        {"id": m, "object": "model", "created": 0, "owned_by": "llama-farm"}
        for m in fleet["models"]
    ]
    return Response(json.dumps({"object": "list", "data": data}), content_type="application/json")


async def completions(bridge: Bridge, coordinator: CoordinatorClient) -> Response:
    """``POST /v1/chat/completions``: queued by the coordinator, then streamed (SSE) or
    answered whole from the bridge."""
    body = await request_json(request)
    if not isinstance(body, dict):
        return openai_error(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return openai_error(400, "messages must be a list of {role, content} objects")
    turns = [{"role": m.get("role"), "content": _text(m.get("content"))} for m in messages]
    thread_id = new_job_id()  # the reply's thread: watched before the request is queued
    try:
        sub = await bridge.subscribe(thread_id)
    except MqttError:
        return openai_error(503, "the farm is unavailable; try again shortly", "5", UNAVAILABLE)
    try:
        queued = await coordinator.programmatic(
            "POST",
            "/completions",
            {
                "api_key": _key(),
                "model": body.get("model") or "",
                "messages": turns,
                "thread_id": thread_id,
            },
        )
    except CoordinatorUnavailable:
        bridge.unsubscribe(sub)
        return openai_error(503, "the farm is unavailable; try again shortly", "5", UNAVAILABLE)
    if queued.status_code != 201:
        bridge.unsubscribe(sub)
        return await _upstream_error(queued)
    reply = queued.json()["reply"]
    follow = Follow(bridge, sub, reply["job_id"], reply["message_id"])
    ident, created, model = f"chatcmpl-{reply['job_id']}", int(time.time()), reply["model"]
    if body.get("stream"):
        return Response(
            _sse(follow, ident, created, model),
            content_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    async for kind, value in follow.events():
        if kind == "end":
            return _whole(value, ident, created, model)
    return openai_error(502, "the reply was lost")


def create_openai_blueprint(bridge: Bridge, coordinator: CoordinatorClient) -> Blueprint:
    bp = Blueprint("openai", __name__, url_prefix="/v1")
    for method, rule, view in (
        ("GET", "/models", models),
        ("POST", "/chat/completions", completions),
    ):
        bp.add_url_rule(
            rule, view.__name__, functools.partial(view, bridge, coordinator), methods=[method]
        )
    return bp


def _text(content: Any) -> str:
    """OpenAI content: a string, or a list of parts of which the text ones count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _failure(view: dict[str, Any]) -> tuple[int, str, str]:
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


def _whole(view: dict[str, Any], ident: str, created: int, model: str) -> Response:
    if view["state"] != MessageState.DONE.value:
        status, message, code = _failure(view)
        retry = str(UNSTARTED_RETRY_S) if status == 503 else None
        return openai_error(status, message, retry, code=code)
    body = {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": view["content"]},
                "finish_reason": "stop",
            }
        ],
    }
    return Response(json.dumps(body), content_type="application/json")


async def _sse(follow: Follow, ident: str, created: int, model: str) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        payload = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(payload)}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""})
    streamed = ""
    async for kind, value in follow.events():
        if kind == "text":
            streamed += value
            yield chunk({"content": value})
            continue
        if value["state"] == MessageState.DONE.value:
            # Whatever the live stream missed (it never should) comes from the stored text.
            if value["content"].startswith(streamed) and len(value["content"]) > len(streamed):
                yield chunk({"content": value["content"][len(streamed) :]})
            yield chunk({}, "stop")
        else:
            _, message, code = _failure(value)
            error = {"message": message, "type": "server_error", "param": None, "code": code}
            yield f"data: {json.dumps({'error': error})}\n\n".encode()
        break
    yield b"data: [DONE]\n\n"
