"""The simulator's HTTP API, with Ollama's paths, field names and error shapes."""

import asyncio
import hashlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from quart import Quart, Response, request

from farm_protocol.models import normalize_model
from farm_runtime.http_serving import request_json
from llama_farm.ollama_sim.replies import (
    call_of,
    embedding,
    json_reply,
    lorem_tokens,
    parse_directives,
    tokenize,
)
from llama_farm.ollama_sim.settings import SimSettings

VERSION = "0.0.0-llama-farm-sim"
FORMAT = "llama-farm-sim"  # models' details.format: how a worker knows it is simulated


def _stamp(at: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if at is None else at, UTC).isoformat()


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _details(name: str) -> dict[str, Any]:
    family = name.split(":")[0].split("/")[-1]
    return {
        "parent_model": "",
        "format": FORMAT,
        "family": family,
        "families": [family],
        "parameter_size": "8B",
        "quantization_level": "Q4_0",
    }


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status=status, content_type="application/json")


class SimState:
    """The only state: which models are pulled, and which are loaded (until keep-alive)."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.installed = {normalize_model(m): time.time() for m in settings.models}
        self.pullable = {normalize_model(m) for m in settings.pullable}
        self.loaded: dict[str, float] = {}  # model -> expiry
        # Streamed generations: running now, and how each ended. "aborted" counts streams
        # the client closed early (a worker cancelling a job closes its HTTP stream).
        self.streams = {"active": 0, "completed": 0, "aborted": 0}
        # ``[[sim:faults=N]]``: how many requests with each such message have faulted.
        self.faulted: dict[str, int] = {}
        # What the latest generation requests asked for (their options, format and tools),
        # so that tests can check what a client's parameters became on the way here.
        self.requests: deque[dict[str, Any]] = deque(maxlen=200)

    def fault_now(self, message: str, times: int) -> bool:
        """Whether this request faults: only the first ``times`` with this message do."""
        key = hashlib.sha256(message.encode()).hexdigest()
        done = self.faulted.get(key, 0)
        if done >= times:
            return False
        if len(self.faulted) > 10_000:
            self.faulted.clear()
        self.faulted[key] = done + 1
        return True

    def is_loaded(self, model: str) -> bool:
        return self.loaded.get(model, 0) > time.time()

    def touch(self, model: str) -> None:
        self.loaded[model] = time.time() + self.settings.keep_alive_s


def create_sim_app(settings: SimSettings) -> Quart:
    app = Quart("ollama_sim")
    state = SimState(settings)

    @app.get("/")
    async def root() -> Response:
        return Response("Ollama is running", content_type="text/plain")

    @app.get("/sim/streams")
    async def streams() -> dict[str, int]:
        """Not Ollama's: the simulator's own counters, for tests."""
        return dict(state.streams)

    @app.get("/sim/requests")
    async def requests() -> dict[str, Any]:
        """Not Ollama's: the latest generation requests as received, oldest first."""
        return {"requests": list(state.requests)}

    @app.get("/api/version")
    async def version() -> dict[str, str]:
        return {"version": VERSION}

    @app.get("/api/tags")
    async def tags() -> dict[str, Any]:
        return {
            "models": [
                {
                    "name": m,
                    "model": m,
                    "modified_at": _stamp(at),
                    "size": 4_661_224_676,
                    "digest": _digest(m),
                    "details": _details(m),
                }
                for m, at in sorted(state.installed.items())
            ]
        }

    @app.get("/api/ps")
    async def ps() -> dict[str, Any]:
        now = time.time()
        return {
            "models": [
                {
                    "name": m,
                    "model": m,
                    "size": 5_137_025_024,
                    "digest": _digest(m),
                    "details": _details(m),
                    "expires_at": _stamp(exp),
                    "size_vram": 5_137_025_024,
                }
                for m, exp in sorted(state.loaded.items())
                if exp > now
            ]
        }

    @app.post("/api/show")
    async def show() -> Response:
        body = await _body()
        name = normalize_model(str(body.get("model") or body.get("name") or ""))
        if name not in state.installed:
            return _error(404, f"model '{name}' not found")
        info = {"general.architecture": "llama", "general.parameter_count": 8_030_261_248}
        return Response(
            json.dumps(
                {
                    "modelfile": f"FROM {name}\n",
                    "parameters": 'stop "<|eot_id|>"',
                    "template": "{{ .Prompt }}",
                    "details": _details(name),
                    "model_info": info,
                    "capabilities": ["completion"],
                    "modified_at": _stamp(state.installed[name]),
                }
            ),
            content_type="application/json",
        )

    @app.post("/api/pull")
    async def pull() -> Response:
        body = await _body()
        name = normalize_model(str(body.get("model") or body.get("name") or ""))
        if name not in state.installed and name not in state.pullable:
            return _error(500, "pull model manifest: file does not exist")
        total = 4_661_224_676

        async def progress() -> AsyncIterator[bytes]:
            yield _line({"status": "pulling manifest"})
            for done in (0, total // 2, total):
                yield _line(
                    {
                        "status": f"pulling {_digest(name)[:12]}",
                        "digest": f"sha256:{_digest(name)}",
                        "total": total,
                        "completed": done,
                    }
                )
                await asyncio.sleep(0.01)
            state.installed[name] = time.time()
            for status in ("verifying sha256 digest", "writing manifest", "success"):
                yield _line({"status": status})

        if body.get("stream", True) is False:
            async for _ in progress():
                pass
            return Response(json.dumps({"status": "success"}), content_type="application/json")
        return Response(progress(), content_type="application/x-ndjson")

    @app.post("/api/embed")
    async def embed() -> Response:
        """Deterministic vectors (``replies.embedding``): the same input, the same vector."""
        body = await _body()
        name = normalize_model(str(body.get("model") or ""))
        if name not in state.installed:
            return _error(404, f'model "{body.get("model")}" not found, try pulling it first')
        given = body.get("input")
        inputs = [given] if isinstance(given, str) else given
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            return _error(400, "input must be a string or a list of strings")
        dims = body.get("dimensions")
        size = dims if isinstance(dims, int) and dims > 0 else settings.embedding_dims
        state.requests.append(
            {
                "path": "/api/embed",
                "model": name,
                "input": inputs,
                **{k: body[k] for k in ("options", "dimensions", "truncate") if body.get(k)},
            }
        )
        state.touch(name)
        return Response(
            json.dumps(
                {
                    "model": body.get("model"),
                    "embeddings": [embedding(name, text, size) for text in inputs],
                    "total_duration": 1_000_000,
                    "load_duration": 0,
                    "prompt_eval_count": sum(len(tokenize(text)) for text in inputs),
                }
            ),
            content_type="application/json",
        )

    @app.post("/api/chat")
    async def chat() -> Response:
        return await _generate(await _body(), chat=True)

    @app.post("/api/generate")
    async def generate() -> Response:
        return await _generate(await _body(), chat=False)

    async def _generate(body: dict[str, Any], *, chat: bool) -> Response:
        name = normalize_model(str(body.get("model") or ""))
        if name not in state.installed:
            return _error(404, f'model "{body.get("model")}" not found, try pulling it first')
        messages = (
            body.get("messages") or []
            if chat
            else [{"role": "user", "content": str(body.get("prompt") or "")}]
        )
        if not isinstance(messages, list):
            return _error(400, "messages must be a list")
        state.requests.append(
            {
                "path": "/api/chat" if chat else "/api/generate",
                "model": name,
                "messages": messages,
                **{
                    k: body[k]
                    for k in ("options", "format", "tools", "stream")
                    if body.get(k) not in (None, [], {}, "")  # what a client left out
                },
            }
        )
        plan = _plan(settings, state, name, messages, body)
        if plan.fault == "http_error":
            return _error(500, "simulated failure: the model runner crashed")
        if plan.fault == "hang":
            await asyncio.Event().wait()  # never answers; ends when the client goes away
        key = "message" if chat else "response"

        def part(text: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = calls
            return {
                "model": body.get("model"),
                "created_at": _stamp(),
                key: message if chat else text,
            }

        async def tokens() -> AsyncIterator[dict[str, Any]]:
            started = time.monotonic_ns()
            await asyncio.sleep(plan.first_token_s)
            load_ns = int(plan.load_s * 1e9)
            for i, token in enumerate(plan.tokens):
                if plan.fault == "error_mid_stream" and i == len(plan.tokens) // 2:
                    yield {"error": "simulated failure: the model runner stopped mid-stream"}
                    return
                if i and plan.delay_s:
                    await asyncio.sleep(plan.delay_s)
                yield part(token)
            if plan.tool_calls and chat:
                yield part("", plan.tool_calls)
            state.touch(name)
            total = time.monotonic_ns() - started
            final = part("") | {
                "done": True,
                "done_reason": plan.done_reason,
                "total_duration": total,
                "load_duration": load_ns,
                "prompt_eval_count": plan.prompt_tokens,
                "prompt_eval_duration": 1_000_000,
                "eval_count": plan.eval_count,
                "eval_duration": max(total - load_ns, 0),
            }
            if not chat:
                final["context"] = [1, 2, 3]
            yield final

        if body.get("stream", True) is False:
            text, last = [], {}
            async for item in tokens():
                if "error" in item:
                    return _error(500, item["error"])
                text.append(item[key]["content"] if chat else item[key])
                last = item
            if chat:
                last[key] = {"role": "assistant", "content": "".join(text)}
                if plan.tool_calls:
                    last[key]["tool_calls"] = plan.tool_calls
            else:
                last[key] = "".join(text)
            return Response(json.dumps(last), content_type="application/json")

        async def stream() -> AsyncIterator[bytes]:
            state.streams["active"] += 1
            ended = "aborted"
            try:
                async for item in tokens():
                    yield _line(
                        item | ({} if "error" in item else {"done": item.get("done", False)})
                    )
                ended = "completed"
            finally:
                state.streams["active"] -= 1
                state.streams[ended] += 1

        return Response(stream(), content_type="application/x-ndjson")

    return app


@dataclass(slots=True)
class _Plan:
    tokens: list[str]
    first_token_s: float
    load_s: float
    delay_s: float
    fault: str | None
    prompt_tokens: int
    done_reason: str = "stop"
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    eval_count: int = 0


def _plan(
    settings: SimSettings, state: SimState, name: str, messages: list[Any], body: dict[str, Any]
) -> _Plan:
    """What to answer, as a model would: the reply text (or a tool call, or JSON when a
    format is asked for), cut by ``num_predict`` (done_reason "length") and at the first
    ``stop`` sequence; its pace; any fault asked for."""
    last_user = ""
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            last_user = str(message.get("content") or "")
    clean, directives = parse_directives(last_user)
    given = body.get("options")
    options: dict[str, Any] = given if isinstance(given, dict) else {}
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    tool_calls: list[dict[str, Any]] = []
    if last.get("role") == "tool":
        tool = last.get("tool_name") or "the tool"
        tokens = tokenize(f"{tool} returned: {last.get('content') or ''}")
    elif tools and isinstance(tools[0], dict):
        tool_calls = [call_of(tools[0], _plain(messages))]
        tokens = []
    elif body.get("format"):
        tokens = tokenize(json_reply(body["format"], name, _plain(messages)))
    elif directives.echo or settings.reply == "echo":
        tokens = tokenize(clean) or ["…"]
    else:
        tokens = lorem_tokens(name, _plain(messages), directives.tokens or settings.reply_tokens)
    tokens, done_reason = _cut(tokens, options)
    tps = directives.tps if directives.tps is not None else settings.tokens_per_s
    load_s = 0.0 if state.is_loaded(name) else settings.load_ms / 1000
    fault = directives.fault or (None if settings.fault == "none" else settings.fault)
    if directives.fault and directives.faults is not None:
        fault = fault if state.fault_now(last_user, directives.faults) else None
    prompt_tokens = sum(
        len(tokenize(str(m.get("content") or ""))) for m in messages if isinstance(m, dict)
    )
    return _Plan(
        tokens,
        settings.ttft_ms / 1000 + load_s,
        load_s,
        1 / tps if tps > 0 else 0.0,
        fault,
        prompt_tokens,
        done_reason,
        tool_calls,
        eval_count=len(tokens) + sum(len(json.dumps(c)) // 4 for c in tool_calls),
    )


def _cut(tokens: list[str], options: dict[str, Any]) -> tuple[list[str], str]:
    """The tokens up to the first ``stop`` sequence (left out, as Ollama does), and at
    most ``num_predict`` of them; and why the reply ended."""
    stop = options.get("stop")
    stops = [stop] if isinstance(stop, str) else [s for s in stop or () if isinstance(s, str)]
    text = "".join(tokens)
    ends = [text.find(s) for s in stops if s and s in text]
    if ends:
        tokens = tokenize(text[: min(ends)])
    limit = options.get("num_predict")
    if isinstance(limit, int) and 0 <= limit < len(tokens):
        return tokens[:limit], "length"
    return tokens, "stop"


def _plain(messages: list[Any]) -> list[dict[str, Any]]:
    return [
        {"role": m.get("role"), "content": parse_directives(str(m.get("content") or ""))[0]}
        for m in messages
        if isinstance(m, dict)
    ]


def _line(item: dict[str, Any]) -> bytes:
    return json.dumps(item).encode() + b"\n"


async def _body() -> dict[str, Any]:
    data = await request_json(request)
    return data if isinstance(data, dict) else {}
