"""Rows the store tests need, made the same way everywhere."""

import json
import time

from coordinator.db.tables import Worker
from farm_protocol.payloads import Generation


def add_worker(
    worker_id: str,
    capacity: int = 1,
    loaded: tuple[str, ...] = (),
    models: tuple[str, ...] = ("llama3:latest",),
) -> None:
    """An online worker serving ``models``, heartbeating (its last beat is an hour ahead,
    so no grace period runs out during a test)."""
    Worker.create(
        id=worker_id,
        name=worker_id,
        key_hash="x",
        capacity=capacity,
        state="online",
        last_seen=time.time() + 3600,
        models=json.dumps(list(models)),
        loaded_models=json.dumps(list(loaded)),
    )


def asking(turns: list[tuple[str, str]]) -> Generation:
    """An API request's context from (role, content) pairs."""
    return Generation.model_validate({"messages": [{"role": r, "content": c} for r, c in turns]})
