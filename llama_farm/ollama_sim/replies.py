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
