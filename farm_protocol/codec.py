"""Encoding and decoding of payloads. Decode once, where bytes arrive; pass models after."""

from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from farm_protocol.errors import PayloadError
from farm_protocol.payloads import (
    MAX_PACKET_BYTES,
    ControlMessage,
    JobEvent,
    JobProgress,
    ThreadEvent,
)

T = TypeVar("T")

JOB_EVENT: TypeAdapter[JobEvent] = TypeAdapter(JobEvent)
JOB_PROGRESS: TypeAdapter[JobProgress] = TypeAdapter(JobProgress)
CONTROL: TypeAdapter[ControlMessage] = TypeAdapter(ControlMessage)
THREAD_EVENT: TypeAdapter[ThreadEvent] = TypeAdapter(ThreadEvent)

_PREVIEW = 200


def encode(payload: BaseModel) -> bytes:
    return payload.model_dump_json().encode()


def preview(raw: Any) -> str:
    """A short, printable rendering of raw bytes for a log line."""
    data = raw if isinstance(raw, bytes | bytearray) else str(raw).encode()
    text = bytes(data[:_PREVIEW]).decode("utf-8", errors="replace")
    return text + ("..." if len(data) > _PREVIEW else "")


def decode(adapter: TypeAdapter[T], raw: Any, max_bytes: int = MAX_PACKET_BYTES) -> T:
    """Validate raw MQTT payload bytes as ``adapter``'s type, or raise PayloadError (also,
    unread, for a payload over ``max_bytes``)."""
    if not isinstance(raw, bytes | bytearray | str):
        raise PayloadError(f"unexpected payload type {type(raw).__name__}")
    if len(raw) > max_bytes:
        raise PayloadError(f"payload of {len(raw)} bytes, over the {max_bytes} allowed")
    try:
        return adapter.validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise PayloadError(f"{where or 'payload'}: {first.get('msg')} in {preview(raw)!r}") from exc


def adapter_for(model: type[T]) -> TypeAdapter[T]:
    return TypeAdapter(model)
