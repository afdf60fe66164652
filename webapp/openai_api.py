"""The OpenAI-compatible API: ``POST /v1/chat/completions`` (streamed as server-sent
events, or whole) and ``GET /v1/models``, for existing OpenAI clients and chat front ends.

A request carries the client's API key as its bearer token (keys are made by an admin:
``llama-farm api-keys add`` or the admin API). The coordinator checks it, applies the
key's limit and the farm's load shedding, and queues the request; the reply streams here
through the same MQTT bridge the browsers use. Errors come in OpenAI's shape, with a
``Retry-After`` when the farm is busy (429) or overloaded (503).
"""

import base64
import json
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from quart import Blueprint, Response, request

from farm_protocol.chat import MessageState
from farm_protocol.models import normalize_model
from farm_protocol.payloads import Generation, embeddings_of
from farm_runtime.http_serving import request_json
from webapp.bridge import Bridge
from webapp.coordinator_client import CoordinatorClient
from webapp.openai_request import Refused, translate, translate_embeddings
from webapp.replies import (
    UNAVAILABLE,
    UNSTARTED_RETRY_S,
    Farm,
    Follow,
    Refusal,
    Route,
    add_routes,
    failure,
)

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
    status: int,
    message: str,
    retry_after: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> Response:
    kind, usual_code = _ERROR_KINDS.get(status, ("server_error", None))
    code = code or usual_code
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    response = Response(json.dumps(body), status=status, content_type="application/json")
    if retry_after:
        response.headers["Retry-After"] = retry_after
    return response


# The coordinator's reasons for a 503, as OpenAI clients know them.
_BUSY_CODES = {"no_worker": "model_not_available"}


def _refused(refusal: Refusal) -> Response:
    code = refusal.reason if refusal.reason == UNAVAILABLE else None
    code = _BUSY_CODES.get(refusal.reason or "", code)
    return openai_error(refusal.status, refusal.message, refusal.retry_after, code=code)


@dataclass(frozen=True, slots=True)
class _Api:
    farm: Farm
    keepalive_s: float


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "llama-farm"}


async def models(api: _Api) -> Response:
    """``GET /v1/models``: what the fleet serves, for a client with a valid key."""
    try:
        fleet = await api.farm.fleet()
    except Refusal as refusal:
        return _refused(refusal)
    body = {"object": "list", "data": [_model(m) for m in fleet["models"]]}
    return Response(json.dumps(body), content_type="application/json")


async def model(api: _Api, model_id: str) -> Response:
    """``GET /v1/models/{id}``: one model the fleet serves (404 if none serves it)."""
    try:
        fleet = await api.farm.fleet()
    except Refusal as refusal:
        return _refused(refusal)
    if normalize_model(model_id) not in {normalize_model(m) for m in fleet["models"]}:
        return openai_error(404, f"the model {model_id!r} does not exist on this farm")
    return Response(json.dumps(_model(model_id)), content_type="application/json")


class _Asked(Protocol):
    @property
    def model(self) -> str: ...

    @property
    def generation(self) -> Generation: ...


A = TypeVar("A", bound=_Asked)


async def _queued(api: _Api, translator: Callable[[Any], A]) -> tuple[A, Follow] | Response:
    """The request translated (a 400 naming the field if it cannot be, once its key
    checks out) and queued."""
    try:
        asked = translator(await request_json(request))
    except Refused as refused:
        wrong_key = await api.farm.key_refusal()  # a wrong key is told so first
        if wrong_key is not None:
            return _refused(wrong_key)
        return openai_error(400, refused.message, param=refused.param)
    try:
        return asked, await api.farm.queue(asked.model, asked.generation)
    except Refusal as refusal:
        return _refused(refusal)


async def completions(api: _Api) -> Response:
    """``POST /v1/chat/completions``: translated (``webapp.openai_request``), queued by
    the coordinator, then streamed (SSE) or answered whole from the bridge."""
    queued = await _queued(api, translate)
    if isinstance(queued, Response):
        return queued
    asked, follow = queued
    shape = _Shape(f"chatcmpl-{follow.job_id}", int(time.time()), follow.model)
    if asked.stream:
        return Response(
            _sse(follow, shape, asked.include_usage, api.keepalive_s),
            content_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    async for kind, value in follow.events():
        if kind == "end":
            return _whole(value, shape)
    return openai_error(502, "the reply was lost")


async def embeddings(api: _Api) -> Response:
    """``POST /v1/embeddings``: a job of its own on a worker that serves the model; its
    vectors come back as the job's text (``farm_protocol.payloads.embedding_text``)."""
    queued = await _queued(api, translate_embeddings)
    if isinstance(queued, Response):
        return queued
    asked, follow = queued
    async for kind, view in follow.events():
        if kind != "end":
            continue
        if view["state"] != MessageState.DONE.value:
            status, message, code = failure(view)
            retry = str(UNSTARTED_RETRY_S) if status == 503 else None
            return openai_error(status, message, retry, code=code)
        vectors = embeddings_of(view["content"])
        data = [
            {"object": "embedding", "index": i, "embedding": _encoded(v, asked.base64)}
            for i, v in enumerate(vectors)
        ]
        tokens = view.get("prompt_tokens") or 0
        body = {
            "object": "list",
            "data": data,
            "model": follow.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response(json.dumps(body), content_type="application/json")
    return openai_error(502, "the reply was lost")


def _encoded(vector: list[float], as_base64: bool) -> list[float] | str:
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def create_openai_blueprint(
    bridge: Bridge, coordinator: CoordinatorClient, keepalive_s: float = 15.0
) -> Blueprint:
    bp = Blueprint("openai", __name__, url_prefix="/v1")
    api = _Api(Farm(bridge, coordinator), keepalive_s)
    routes: list[Route] = [
        ("GET", "/models", models),
        ("GET", "/models/<path:model_id>", model),
        ("POST", "/chat/completions", completions),
        ("POST", "/embeddings", embeddings),
    ]
    add_routes(bp, routes, api)
    return bp


@dataclass(frozen=True, slots=True)
class _Shape:
    """What every part of one completion's answer repeats."""

    ident: str
    created: int
    model: str


def _usage(view: dict[str, Any]) -> dict[str, int]:
    prompt, completion = view.get("prompt_tokens") or 0, view.get("completion_tokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _tool_calls(view: dict[str, Any], ident: str) -> list[dict[str, Any]]:
    """The reply's tool calls in OpenAI's shape. Ollama gives them no ids: each is made
    from the completion's, the same in a stream and in a whole answer."""
    return [
        {
            "id": f"call_{ident.removeprefix('chatcmpl-')[:20]}_{i}",
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments") or {})},
        }
        for i, c in enumerate(view.get("tool_calls") or ())
    ]


def _whole(view: dict[str, Any], shape: _Shape) -> Response:
    if view["state"] != MessageState.DONE.value:
        status, message, code = failure(view)
        retry = str(UNSTARTED_RETRY_S) if status == 503 else None
        return openai_error(status, message, retry, code=code)
    answer: dict[str, Any] = {"role": "assistant", "content": view["content"]}
    calls = _tool_calls(view, shape.ident)
    if calls:
        answer |= {"content": view["content"] or None, "tool_calls": calls}
    body = {
        "id": shape.ident,
        "object": "chat.completion",
        "created": shape.created,
        "model": shape.model,
        "choices": [
            {"index": 0, "message": answer, "finish_reason": view.get("finish_reason") or "stop"}
        ],
        "usage": _usage(view),
    }
    return Response(json.dumps(body), content_type="application/json")


async def _sse(
    follow: Follow, shape: _Shape, include_usage: bool, keepalive_s: float
) -> AsyncIterator[bytes]:
    def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": shape.ident,
            "object": "chat.completion.chunk",
            "created": shape.created,
            "model": shape.model,
            "choices": choices,
        }
        if include_usage:
            payload["usage"] = usage  # as OpenAI: null but in the last event
        return f"data: {json.dumps(payload)}\n\n".encode()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return event([{"index": 0, "delta": delta, "finish_reason": finish}])

    yield chunk({"role": "assistant", "content": ""})
    streamed = ""
    async for kind, value in follow.events(keepalive_s):
        if kind == "idle":
            yield b": keep-alive\n\n"  # queued, or the model loading: proxies wait on
            continue
        if kind == "text":
            streamed += value
            yield chunk({"content": value})
            continue
        if value["state"] == MessageState.DONE.value:
            # Whatever the live stream missed (it never should) comes from the stored text.
            if value["content"].startswith(streamed) and len(value["content"]) > len(streamed):
                yield chunk({"content": value["content"][len(streamed) :]})
            calls = _tool_calls(value, shape.ident)
            if calls:
                yield chunk({"tool_calls": [{"index": i} | c for i, c in enumerate(calls)]})
            yield chunk({}, value.get("finish_reason") or "stop")
            if include_usage:
                yield event([], _usage(value))
        else:
            _, message, code = failure(value)
            error = {"message": message, "type": "server_error", "param": None, "code": code}
            yield f"data: {json.dumps({'error': error})}\n\n".encode()
        break
    yield b"data: [DONE]\n\n"
