"""Ollama's API on the farm, so that any Ollama client (the official ``ollama`` Python
client, Open WebUI's Ollama connection, scripts written for Ollama) can use the whole
farm as if it were one Ollama: ``POST /api/chat`` and ``/api/generate`` (streamed as
NDJSON, or whole, exactly as Ollama does), ``POST /api/embed`` (and the older
``/api/embeddings``), ``GET /api/tags``, ``POST /api/show``, ``GET /api/version`` and
``GET /api/ps``.

Every request carries an API key as its bearer token (``Authorization: Bearer lfa_...``,
the same keys as the OpenAI API). ``options``, ``format`` and ``tools`` go to the
worker's Ollama as they are; what the farm cannot do (images, ``raw`` prompts, a
``context`` to continue, thinking) gets a 400 naming it. Errors are Ollama's
``{"error": "..."}``. Durations in the last part are the webapp's view of the request
(queue wait included in ``total_duration``), not the worker's."""

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from quart import Blueprint, Response, request

from farm_protocol.chat import MessageState
from farm_protocol.models import normalize_model
from farm_protocol.payloads import ChatTurn, Generation, OptionValue, embeddings_of
from farm_runtime.http_serving import request_json
from webapp.bridge import Bridge
from webapp.coordinator_client import CoordinatorClient
from webapp.replies import Farm, Follow, Refusal, Route, add_routes, failure

# What /api/version says: the Ollama API this follows (clients check it for features).
OLLAMA_VERSION = "0.11.0"
_ROLES = {"system", "user", "assistant", "tool"}
# Its paths: API clients known by their keys, with no browser session.
OLLAMA_PATHS = frozenset(
    f"/api/{name}"
    for name in ("chat", "generate", "embed", "embeddings", "tags", "show", "version", "ps")
)


class Invalid(Exception):
    """A request the farm cannot honour as asked (400)."""


def ollama_error(status: int, message: str, retry_after: str | None = None) -> Response:
    response = Response(
        json.dumps({"error": message}), status=status, content_type="application/json"
    )
    if retry_after:
        response.headers["Retry-After"] = retry_after
    return response


def _refused(refusal: Refusal) -> Response:
    return ollama_error(refusal.status, refusal.message, refusal.retry_after)


async def _bad_request(farm: Farm, message: str) -> Response:
    """A 400 for a malformed request, once its key checks out (a wrong key's 401 first)."""
    wrong_key = await farm.key_refusal()
    return _refused(wrong_key) if wrong_key is not None else ollama_error(400, message)


def _stamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _json(body: Any) -> Response:
    return Response(json.dumps(body), content_type="application/json")


def _details(name: str) -> dict[str, Any]:
    family = name.split(":")[0].split("/")[-1]
    return {"format": "gguf", "family": family, "families": [family]}


def _listed(name: str) -> dict[str, Any]:
    return {"name": name, "model": name, "modified_at": _stamp(), "size": 0, "digest": ""} | {
        "details": _details(name)
    }


async def version() -> Response:
    return _json({"version": OLLAMA_VERSION})


async def tags(farm: Farm) -> Response:
    """The models some online worker serves."""
    try:
        fleet = await farm.fleet()
    except Refusal as refusal:
        return _refused(refusal)
    return _json({"models": [_listed(m) for m in fleet["models"]]})


async def ps(farm: Farm) -> Response:
    """The models loaded in some worker's memory now."""
    try:
        fleet = await farm.fleet()
    except Refusal as refusal:
        return _refused(refusal)
    running = [_listed(m) | {"expires_at": _stamp(), "size_vram": 0} for m in fleet["loaded"]]
    return _json({"models": running})


async def show(farm: Farm) -> Response:
    body = await request_json(request)
    name = body.get("model") or body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        return await _bad_request(farm, "model is required")
    try:
        fleet = await farm.fleet()
    except Refusal as refusal:
        return _refused(refusal)
    if normalize_model(name) not in {normalize_model(m) for m in fleet["models"]}:
        return ollama_error(404, f"model '{name}' not found")
    return _json(
        {
            "modelfile": "",
            "parameters": "",
            "template": "",
            "details": _details(name),
            "model_info": {},
            "capabilities": ["completion", "tools"],
            "modified_at": _stamp(),
        }
    )


async def chat(farm: Farm) -> Response:
    return await _generate(farm, chat=True)


async def generate(farm: Farm) -> Response:
    return await _generate(farm, chat=False)


async def _generate(farm: Farm, *, chat: bool) -> Response:
    body = await request_json(request)
    try:
        model, generation = _translate(body, chat=chat)
    except Invalid as exc:
        return await _bad_request(farm, str(exc))
    try:
        follow = await farm.queue(model, generation)
    except Refusal as refusal:
        return _refused(refusal)
    parts = _parts(follow, model, chat=chat, started=time.monotonic_ns())
    if body.get("stream", True) is False:
        return await _whole(parts, chat=chat)
    return Response(parts, content_type="application/x-ndjson")


def _translate(body: Any, *, chat: bool) -> tuple[str, Generation]:
    if not isinstance(body, dict):
        raise Invalid("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Invalid("model is required")
    if body.get("think") not in (None, False):
        raise Invalid("think: thinking is not supported on this farm")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise Invalid("messages must be a non-empty list")
        turns = [_turn(m, i) for i, m in enumerate(messages)]
    else:
        for name in ("images", "context"):
            if body.get(name):
                raise Invalid(f"{name}: not supported on this farm")
        if body.get("raw") or body.get("template"):
            raise Invalid("raw and template: not supported on this farm (prompts use the model's)")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise Invalid("prompt is required")
        turns = [{"role": "user", "content": prompt}]
        if isinstance(body.get("system"), str) and body["system"]:
            turns.insert(0, {"role": "system", "content": body["system"]})
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise Invalid("options must be an object")
    fmt = body.get("format") or None
    if fmt is not None and fmt != "json" and not isinstance(fmt, dict):
        raise Invalid('format must be "json" or a JSON schema')
    tools = body.get("tools") or [] if chat else []
    try:
        generation = Generation.model_validate(
            {"messages": turns, "options": _options(options), "format": fmt, "tools": tools}
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise Invalid(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    if generation.messages[-1].role not in ("user", "tool"):
        raise Invalid("messages must end with a user or tool message")
    return model, generation


def _options(options: dict[str, Any]) -> dict[str, OptionValue]:
    for name, value in options.items():
        valid = isinstance(value, int | float | str | bool) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        )
        if not valid:
            raise Invalid(f"options.{name}: a number, a string, a boolean or a list of strings")
    return options


def _turn(message: Any, i: int) -> dict[str, Any]:
    if not isinstance(message, dict) or message.get("role") not in _ROLES:
        raise Invalid(f"messages[{i}].role must be one of {', '.join(sorted(_ROLES))}")
    if message.get("images"):
        raise Invalid(f"messages[{i}].images: images are not supported on this farm")
    content = message.get("content") or ""
    if not isinstance(content, str):
        raise Invalid(f"messages[{i}].content must be a string")
    turn: dict[str, Any] = {"role": message["role"], "content": content}
    calls = message.get("tool_calls") or []
    if calls:
        if not isinstance(calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("function"), dict) for c in calls
        ):
            raise Invalid(f"messages[{i}].tool_calls: a list of {{function: {{name, arguments}}}}")
        turn["tool_calls"] = [
            {"name": c["function"].get("name"), "arguments": c["function"].get("arguments") or {}}
            for c in calls
        ]
    if isinstance(message.get("tool_name"), str):
        turn["tool_name"] = message["tool_name"]
    ChatTurn.model_validate(turn)  # refused here with the message's index, not later
    return turn


async def embed(farm: Farm) -> Response:
    """``POST /api/embed``: ``input`` (a string or a list), ``truncate``, ``dimensions``,
    ``options``; answered with ``embeddings`` as Ollama does."""
    body = await request_json(request)
    return await _embedded(farm, body, legacy=False)


async def embeddings(farm: Farm) -> Response:
    """``POST /api/embeddings`` (Ollama's older form): one ``prompt``, one ``embedding``."""
    body = await request_json(request)
    if isinstance(body, dict):
        body = body | {"input": body.get("prompt")}
    return await _embedded(farm, body, legacy=True)


async def _embedded(farm: Farm, body: Any, *, legacy: bool) -> Response:
    started = time.monotonic_ns()
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return await _bad_request(farm, "model is required")
    given = body.get("input")
    inputs = [given] if isinstance(given, str) else given
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        return await _bad_request(farm, "input must be a string or a non-empty list of strings")
    try:
        generation = Generation.model_validate(
            {
                "task": "embed",
                "inputs": inputs,
                "options": _options(body.get("options") or {}),
                "dimensions": body.get("dimensions"),
                "truncate": body.get("truncate"),
            }
        )
    except (Invalid, ValidationError) as exc:
        return await _bad_request(farm, str(exc))
    try:
        follow = await farm.queue(body["model"], generation)
    except Refusal as refusal:
        return _refused(refusal)
    async for kind, view in follow.events():
        if kind != "end":
            continue
        if view["state"] != MessageState.DONE.value:
            return ollama_error(500, failure(view)[1])
        vectors = embeddings_of(view["content"])
        if legacy:
            return _json({"embedding": vectors[0] if vectors else []})
        return _json(
            {
                "model": body["model"],
                "embeddings": vectors,
                "total_duration": time.monotonic_ns() - started,
                "load_duration": 0,
                "prompt_eval_count": view.get("prompt_tokens") or 0,
            }
        )
    return ollama_error(502, "the reply was lost")


async def _parts(follow: Follow, model: str, *, chat: bool, started: int) -> AsyncIterator[bytes]:
    """The reply as Ollama streams it: a part per piece of text, then the last part
    with the counts (or an ``{"error"}`` part)."""
    key = "message" if chat else "response"
    first_text: int | None = None

    def part(text: str, **extra: Any) -> bytes:
        piece: Any = {"role": "assistant", "content": text} if chat else text
        return _line({"model": model, "created_at": _stamp(), key: piece} | extra)

    async for kind, value in follow.events():
        if kind == "text":
            first_text = first_text or time.monotonic_ns()
            yield part(value, done=False)
            continue
        if kind != "end":
            continue
        if value["state"] != MessageState.DONE.value:
            yield _line({"error": failure(value)[1]})
            return
        ended = time.monotonic_ns()
        last: dict[str, Any] = {
            "done": True,
            "done_reason": "length" if value.get("finish_reason") == "length" else "stop",
            "total_duration": ended - started,
            "load_duration": 0,
            "prompt_eval_count": value.get("prompt_tokens") or 0,
            "prompt_eval_duration": 0,
            "eval_count": value.get("completion_tokens") or 0,
            "eval_duration": ended - (first_text or ended),
        }
        calls = value.get("tool_calls") or []
        if calls and chat:
            called = [
                {"function": {"name": c["name"], "arguments": c.get("arguments") or {}}}
                for c in calls
            ]
            message = {"role": "assistant", "content": "", "tool_calls": called}
            yield _line({"model": model, "created_at": _stamp(), "message": message} | last)
        else:
            yield part("", **last)
        return


def _line(item: dict[str, Any]) -> bytes:
    return json.dumps(item).encode() + b"\n"


async def _whole(parts: AsyncIterator[bytes], *, chat: bool) -> Response:
    """``"stream": false``: one object with the whole text and the last part's counts."""
    text: list[str] = []
    last: dict[str, Any] = {}
    async for line in parts:
        item = json.loads(line)
        if "error" in item:
            return ollama_error(500, str(item["error"]))
        text.append(item["message"]["content"] if chat else item["response"])
        last = item
    if chat:
        last["message"] = last["message"] | {"content": "".join(text)}
    else:
        last["response"] = "".join(text)
    return _json(last)


def create_ollama_blueprint(bridge: Bridge, coordinator: CoordinatorClient) -> Blueprint:
    bp = Blueprint("ollama", __name__, url_prefix="/api")
    farm = Farm(bridge, coordinator)
    bp.add_url_rule("/version", "version", version, methods=["GET"])
    routes: list[Route] = [
        ("GET", "/tags", tags),
        ("GET", "/ps", ps),
        ("POST", "/show", show),
        ("POST", "/chat", chat),
        ("POST", "/generate", generate),
        ("POST", "/embed", embed),
        ("POST", "/embeddings", embeddings),
    ]
    add_routes(bp, routes, farm)
    return bp
