"""What the worker tells the farm about itself: retained status and heartbeats."""

import time

import aiomqtt

from farm_protocol import PROTOCOL_VERSION, topics
from farm_protocol.codec import encode
from farm_protocol.models import normalize_model
from farm_protocol.payloads import Heartbeat, RunningJob, WorkerState, WorkerStatus
from farm_runtime.entry import version
from fleet_worker.llm import Inventory


def served_models(configured: list[str], inventory: Inventory | None) -> list[str]:
    """Configured models (pulled on demand), or everything Ollama has."""
    if configured:
        return sorted({normalize_model(m) for m in configured})
    return list(inventory.models) if inventory else []


def status_payload(
    worker_id: str,
    session_id: str,
    state: WorkerState,
    *,
    models: list[str],
    inventory: Inventory | None,
    capacity: int,
    reason: str = "",
) -> WorkerStatus:
    return WorkerStatus(
        worker_id=worker_id,
        session_id=session_id,
        state=state,
        models=models,
        loaded_models=list(inventory.loaded) if inventory else [],
        capacity=capacity,
        version=version(),
        protocol=PROTOCOL_VERSION,
        simulated=bool(inventory and inventory.simulated),
        reason=reason,
        at=time.time(),
    )


def last_will(worker_id: str, session_id: str) -> aiomqtt.Will:
    """The retained death certificate the broker publishes if we vanish."""
    death = WorkerStatus(
        worker_id=worker_id,
        session_id=session_id,
        state="offline",
        reason="connection lost",
        at=time.time(),
    )
    return aiomqtt.Will(
        topics.worker_status(worker_id), encode(death), qos=topics.QOS_STATUS, retain=True
    )


def heartbeat(worker_id: str, session_id: str, seq: int, running: list[RunningJob]) -> bytes:
    return encode(
        Heartbeat(
            worker_id=worker_id, session_id=session_id, seq=seq, running=running, at=time.time()
        )
    )
