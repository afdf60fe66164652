"""Identifiers that may appear inside topics, validated on construction."""

import re
import secrets
import uuid
from typing import Annotated

from pydantic import StringConstraints

from farm_protocol.errors import TopicError

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ID_RE = re.compile(_ID_PATTERN)

# An id that is safe as one MQTT topic level: no '/', '+', '#', '$', spaces or control bytes.
TopicId = Annotated[str, StringConstraints(pattern=_ID_PATTERN)]


def check_id(value: str, what: str) -> str:
    """Return ``value`` if it is a valid topic-level id, else raise :class:`TopicError`."""
    if not _ID_RE.match(value):
        raise TopicError(f"invalid {what} {value[:80]!r}: use 1-64 of [A-Za-z0-9_.-]")
    return value


def new_job_id() -> str:
    return uuid.uuid4().hex


def new_session_id() -> str:
    """A fresh id for one worker connection (birth/death matching)."""
    return secrets.token_hex(8)


def slugify(name: str) -> str:
    """A readable worker id from a human name ("Laptop A" -> "laptop-a")."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48]
    return slug or "worker"
