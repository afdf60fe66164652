"""An OpenAI chat-completions request, translated into what the farm runs (``Generation``:
Ollama's options, format and tools, and the exact context) or refused with a 400 that
names the field. Nothing a client sends is dropped without a word: a field is honoured,
accepted because it changes nothing here (``user``, ``metadata``, ...), or refused.

How each field maps is in docs/OPERATIONS.md, "Use the farm from your tools"."""

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from farm_protocol.payloads import MAX_EMBED_INPUTS, MAX_TURNS, ChatTurn, Generation, OptionValue


class Refused(Exception):
    """A request the farm cannot honour as asked: a 400 naming ``param``."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


@dataclass(frozen=True, slots=True)
class Asked:
    model: str
    generation: Generation
    stream: bool
    include_usage: bool


# Sampling fields that Ollama's options take under the same name, with OpenAI's ranges.
_SAMPLING = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
# Fields that change nothing about the reply: accepted and not used.
_IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "safety_identifier"}
# OpenAI fields the farm cannot honour, and why.
_UNSUPPORTED = {
    "logprobs": "log probabilities are not available from the farm's workers",
    "top_logprobs": "log probabilities are not available from the farm's workers",
    "logit_bias": "logit_bias is not supported by Ollama",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "reasoning_effort is not supported",
    "functions": "the legacy functions field is not supported; use tools",
    "function_call": "the legacy function_call field is not supported; use tool_choice",
}
_ROLES = {"system", "developer", "user", "assistant", "tool"}


def translate(body: Any) -> Asked:
    """The farm's request for an OpenAI ``/v1/chat/completions`` body (or ``Refused``)."""
    if not isinstance(body, dict):
        raise Refused("body", "the request body must be a JSON object")
    for name, why in _UNSUPPORTED.items():
        if body.get(name) not in (None, False):
            raise Refused(name, why)
    n = body.get("n")
    if n not in (None, 1):
        raise Refused("n", "only n=1 is supported: ask again for another choice")
    modalities = body.get("modalities")
    if modalities not in (None, ["text"]):
        raise Refused("modalities", "only text output is supported")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise Refused("model", "model must be a string")
    options = _options(body)
    tools = _tools(body)
    stream = body.get("stream") is True
    include_usage = False
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise Refused("stream_options", "stream_options must be an object")
        include_usage = stream_options.get("include_usage") is True
    try:
        generation = Generation(
            messages=_messages(body.get("messages")),
            options=options,
            format=_format(body.get("response_format")),
            tools=tools,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise Refused(where, f"{where}: {first['msg']}") from None
    return Asked(model or "", generation, stream, include_usage)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise Refused(name, f"{name} must be a number from {low:g} to {high:g}")
    return float(value)


def _options(body: dict[str, Any]) -> dict[str, OptionValue]:
    options: dict[str, OptionValue] = {}
    for name, (low, high) in _SAMPLING.items():
        value = _number(body, name, low, high)
        if value is not None:
            options[name] = value
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise Refused("seed", "seed must be a whole number")
        options["seed"] = seed
    limits = [
        (name, body[name])
        for name in ("max_completion_tokens", "max_tokens")
        if body.get(name) is not None
    ]
    for name, value in limits:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise Refused(name, f"{name} must be a whole number of at least 1")
    if limits:
        options["num_predict"] = limits[0][1]  # max_completion_tokens wins, as in OpenAI
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise Refused("stop", "stop must be a string or a list of strings")
        if len(stops) > 4:
            raise Refused("stop", "stop takes at most 4 sequences")
        if stops:
            options["stop"] = stops
    return options


def _format(response_format: Any) -> Any:
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise Refused("response_format", "json_schema needs a schema object")
        return schema
    raise Refused(
        "response_format", "response_format type must be text, json_object or json_schema"
    )


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list) or not all(
        isinstance(t, dict)
        and t.get("type") == "function"
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
        for t in tools
    ):
        raise Refused("tools", "tools must be a list of {type: function, function: {name, ...}}")
    choice = body.get("tool_choice")
    if choice in (None, "auto"):
        return tools
    if choice == "none":
        return []
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise Refused("tool_choice", f"tool_choice names no tool in tools: {name!r}")
        return chosen  # the one tool offered: the model calls it
    raise Refused("tool_choice", "tool_choice must be auto, none or a named function")


def _text(content: Any, where: str) -> str:
    """OpenAI content: a string, or a list of text parts (other parts are refused)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise Refused(
                    f"{where}.content",
                    f"only text content parts are supported (found {kind or 'a non-object'})",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise Refused(f"{where}.content", "content must be a string or a list of parts")


def _calls(message: dict[str, Any], where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    calls = message.get("tool_calls")
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise Refused(f"{where}.tool_calls", "tool_calls must be a list")
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise Refused(f"{where}.tool_calls[{i}]", "a tool call needs function.name")
        arguments = function.get("arguments") or "{}"
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise Refused(
                f"{where}.tool_calls[{i}].function.arguments", "arguments must be a JSON object"
            )
        if isinstance(call.get("id"), str):
            names[call["id"]] = function["name"]
        out.append({"name": function["name"], "arguments": parsed})
    return out


def _messages(messages: Any) -> list[ChatTurn]:
    if not isinstance(messages, list) or not messages:
        raise Refused("messages", "messages must be a non-empty list of {role, content}")
    if len(messages) > MAX_TURNS:
        raise Refused("messages", f"at most {MAX_TURNS} messages")
    turns: list[ChatTurn] = []
    names: dict[str, str] = {}  # tool call id -> the tool's name, for the tool's result
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise Refused(f"{where}.role", f"role must be one of {', '.join(sorted(_ROLES))}")
        role = "system" if message["role"] == "developer" else message["role"]
        turn: dict[str, Any] = {"role": role, "content": _text(message.get("content"), where)}
        if role == "assistant":
            turn["tool_calls"] = _calls(message, where, names)
        if role == "tool":
            call_id = message.get("tool_call_id")
            turn["tool_name"] = names.get(call_id) if isinstance(call_id, str) else None
        turns.append(ChatTurn.model_validate(turn))
    if turns[-1].role not in ("user", "tool"):
        raise Refused("messages", "messages must end with a user or tool message")
    return turns


@dataclass(frozen=True, slots=True)
class AskedEmbeddings:
    model: str
    generation: Generation
    base64: bool  # vectors as base64 of little-endian float32, as OpenAI's SDKs ask


def translate_embeddings(body: Any) -> AskedEmbeddings:
    """The farm's request for an OpenAI ``/v1/embeddings`` body (or ``Refused``)."""
    if not isinstance(body, dict):
        raise Refused("body", "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Refused("model", "model is required")
    given = body.get("input")
    inputs = [given] if isinstance(given, str) else given
    if not isinstance(inputs, list) or not inputs:
        raise Refused("input", "input must be a string or a non-empty list of strings")
    if not all(isinstance(text, str) for text in inputs):
        raise Refused("input", "token arrays are not supported: send the text")
    if not all(inputs):
        raise Refused("input", "an input is empty")
    if len(inputs) > MAX_EMBED_INPUTS:
        raise Refused("input", f"at most {MAX_EMBED_INPUTS} inputs per request")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise Refused("encoding_format", "encoding_format must be float or base64")
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
    ):
        raise Refused("dimensions", "dimensions must be a whole number of at least 1")
    try:
        generation = Generation(task="embed", inputs=inputs, dimensions=dimensions)
    except ValidationError as exc:
        raise Refused("input", str(exc.errors()[0]["msg"])) from None
    return AskedEmbeddings(model, generation, encoding == "base64")
