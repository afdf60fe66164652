"""Presence on SQLite and PostgreSQL: a Last Will names the session it belongs to, so a
stale death arriving after a newer birth never marks a live worker offline; heartbeats
from an old session do not keep a worker alive."""

import time

import peewee as pw

from coordinator.db.tables import Worker
from coordinator.workers.presence import WorkerPresence
from coordinator.workers.registry import WorkerRegistry
from farm_protocol.payloads import Heartbeat, WorkerStatus


def status(session: str, state: str) -> WorkerStatus:
    return WorkerStatus(
        worker_id="w",
        session_id=session,
        state=state,
        models=["llama3"],
        capacity=2,
        at=time.time(),
    )


def test_a_stale_death_never_overwrites_a_newer_birth(db: pw.Database) -> None:
    store = WorkerPresence(db, grace_s=10)
    WorkerRegistry(db, grace_s=10).add("w", "w")
    assert store.record_status(status("first", "online"))
    assert store.record_status(status("second", "online"))  # reconnected: a new session
    assert not store.record_status(status("first", "offline"))  # the old Will, late
    assert [w.id for w in store.online()] == ["w"]
    assert not store.record_heartbeat(
        Heartbeat(worker_id="w", session_id="first", seq=9, at=time.time())
    )
    assert store.record_heartbeat(
        Heartbeat(worker_id="w", session_id="second", seq=1, at=time.time())
    )
    assert store.record_status(status("second", "offline"))  # its own death counts
    assert store.online() == []
    assert Worker.get_by_id("w").state == "offline"


def test_revoked_and_unknown_workers_are_ignored(db: pw.Database) -> None:
    store = WorkerPresence(db, grace_s=10)
    assert not store.record_status(status("s", "online"))  # unknown
    registry = WorkerRegistry(db, grace_s=10)
    registry.add("w", "w")
    registry.revoke("w")
    assert not store.record_status(status("s", "online"))
    assert store.online() == []


def test_the_model_picker_sees_only_online_fresh_unrevoked_workers(db: pw.Database) -> None:
    store = WorkerPresence(db, grace_s=10)
    registry = WorkerRegistry(db, grace_s=10)
    for worker in ("a", "b", "stale", "gone", "off"):
        registry.add(worker, worker)
        store.record_status(
            status("s", "online").model_copy(
                update={
                    "worker_id": worker,
                    "models": [f"{worker}-model", "shared"],
                    "loaded_models": [f"{worker}-model"],
                    "simulated": worker != "b",
                }
            )
        )
    Worker.update(last_seen=time.time() - 11).where(Worker.id == "stale").execute()
    registry.revoke("gone")
    store.record_status(status("s", "offline").model_copy(update={"worker_id": "off"}))

    fleet = store.fleet_models(["shared"])
    assert fleet.workers_online == 2
    assert fleet.models == ["shared", "a-model", "b-model"]
    assert fleet.default_model == "shared"
    assert fleet.loaded == ["a-model", "b-model"]
    assert fleet.simulated is False  # b runs a real Ollama
    assert fleet.unavailable == []
    # a heartbeat from the current session brings the stale one back; a revoked one's
    # does not count
    beats = [
        Heartbeat(worker_id=w, session_id="s", seq=2, at=time.time()) for w in ("stale", "gone")
    ]
    assert [b.worker_id for b in store.record_heartbeats(beats)] == ["stale"]
    assert store.fleet_models([]).workers_online == 3
