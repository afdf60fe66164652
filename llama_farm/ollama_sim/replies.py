"""Reply text as a pure function of the request, and per-request directives.

A user message may carry directives for tests, removed before the reply is made:
``[[sim:fault=http_error|error_mid_stream|hang]]`` (with ``[[sim:faults=N]]``: only
the first N requests carrying that message fault, later ones succeed),
``[[sim:tokens=N]]``, ``[[sim:tps=N]]`` and ``[[sim:echo]]``.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

_DIRECTIVE = re.compile(r"\[\[sim:([a-z_]+)(?:=([A-Za-z0-9_.]+))?\]\]")
_TOKEN = re.compile(r"\s*\S+|\s+")

_WORDS = [
    "llama",
    "alpaca",
    "farm",
    "pasture",
    "token",
    "stream",
    "worker",
    "broker",
    "queue",
    "model",
    "reply",
    "answer",
    "machine",
    "laptop",
    "meadow",
    "wool",
    "hay",
    "barn",
    "herd",
    "shepherd",
    "fence",
    "gate",
    "river",
    "hill",
    "valley",
    "morning",
    "evening",
    "light",
    "quick",
    "gentle",
    "patient",
    "curious",
    "steady",
    "bright",
    "calm",
    "warm",
]


@dataclass(frozen=True, slots=True)
class Directives:
    fault: str | None = None
    faults: int | None = None  # the fault applies to this many requests, then stops
    tokens: int | None = None
    tps: float | None = None
    echo: bool = False


def parse_directives(text: str) -> tuple[str, Directives]:
    found: dict[str, str] = {}
    for match in _DIRECTIVE.finditer(text):
        found[match.group(1)] = match.group(2) or ""
    clean = _DIRECTIVE.sub("", text).strip()
    try:
        tokens = int(found["tokens"]) if "tokens" in found else None
        tps = float(found["tps"]) if "tps" in found else None
    except ValueError:
        tokens = tps = None
    faults = int(found["faults"]) if found.get("faults", "").isdigit() else None
    return clean, Directives(found.get("fault"), faults, tokens, tps, "echo" in found)


def tokenize(text: str) -> list[str]:
    """Split into word-sized tokens whose concatenation is exactly ``text``."""
    return _TOKEN.findall(text)


def lorem_tokens(model: str, messages: list[dict[str, Any]], count: int) -> list[str]:
    """Deterministic text for this exact request: same request, same reply."""
    seed = hashlib.sha256(json.dumps([model, messages], sort_keys=True).encode()).digest()
    tokens: list[str] = []
    for i in range(count):
        digest = hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
        word = _WORDS[digest[0] % len(_WORDS)]
        if i == 0 or tokens[-1].endswith((". ", "\n\n")):
            word = word.capitalize()
        end = digest[1] % 16
        suffix = ". " if end == 0 or i == count - 1 else (", " if end == 1 else " ")
        if i == count - 1:
            suffix = "."
        elif end == 2 and i > 0:
            suffix = ".\n\n"
        tokens.append(word + suffix)
    return tokens


def _word(seed: bytes, i: int) -> str:
    return _WORDS[hashlib.sha256(seed + i.to_bytes(4, "big")).digest()[0] % len(_WORDS)]


def value_for(schema: Any, seed: bytes, depth: int = 0) -> Any:
    """A value that follows a JSON schema (its ``type``, ``enum``, ``properties`` and
    ``items``), the same for the same seed: what a model constrained to it would give."""
    if not isinstance(schema, dict) or depth > 8:
        return _word(seed, depth)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][seed[0] % len(schema["enum"])]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        return {
            str(name): value_for(sub, hashlib.sha256(seed + str(name).encode()).digest(), depth + 1)
            for name, sub in properties.items()
        }
    if kind == "array":
        return [value_for(schema.get("items"), seed, depth + 1)]
    if kind == "integer":
        return seed[1] % 100
    if kind == "number":
        return (seed[1] % 1000) / 10
    if kind == "boolean":
        return seed[1] % 2 == 0
    return _word(seed, depth)


def _seed(model: str, messages: list[dict[str, Any]]) -> bytes:
    return hashlib.sha256(json.dumps([model, messages], sort_keys=True).encode()).digest()


def json_reply(format_: Any, model: str, messages: list[dict[str, Any]]) -> str:
    """The reply to a request with Ollama's ``format``: "json" (any JSON object) or a
    JSON schema (an object that follows it)."""
    seed = _seed(model, messages)
    if isinstance(format_, dict):
        return json.dumps(value_for(format_, seed))
    return json.dumps({"answer": " ".join(_word(seed, i) for i in range(3))})


def call_of(tool: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A call of ``tool`` (OpenAI's and Ollama's shape) with arguments that follow its
    parameters' schema, as a model asked to use it would make."""
    inner = tool.get("function")
    function: dict[str, Any] = inner if isinstance(inner, dict) else tool
    name = str(function.get("name") or "tool")
    seed = _seed(name, messages)
    arguments = value_for(function.get("parameters") or {"type": "object"}, seed)
    return {
        "function": {"name": name, "arguments": arguments if isinstance(arguments, dict) else {}}
    }


def embedding(model: str, text: str, dims: int) -> list[float]:
    """A deterministic vector for ``text``: multiples of 1/256 in [-0.5, 0.5), exact in
    JSON and in float32 (what OpenAI clients decode base64 vectors into), so tests can
    compare vectors exactly end to end."""
    values: list[float] = []
    block = 0
    while len(values) < dims:
        digest = hashlib.sha256(f"{model}\0{text}\0{block}".encode()).digest()
        values += [(b - 128) / 256 for b in digest]
        block += 1
    return values[:dims]
