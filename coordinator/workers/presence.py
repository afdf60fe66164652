"""Which workers are online, from their retained status and heartbeats, and what the
fleet can serve: dispatch's view of the workers, and the model picker's."""

import functools
import json
import time
from dataclasses import dataclass

import peewee as pw

from coordinator.db import sql
from coordinator.db.database import write_transaction
from coordinator.db.tables import Worker
from coordinator.jobs.queue import active_counts
from coordinator.workers import statements as q
from farm_protocol.chat import FleetModels
from farm_protocol.models import display_model, normalize_model
from farm_protocol.payloads import Heartbeat, WorkerStatus


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """An online worker as dispatch sees it."""

    id: str
    models: frozenset[str]
    loaded: frozenset[str]
    capacity: int
    active: int


@functools.lru_cache(maxsize=4096)
def model_names(models_json: str) -> frozenset[str]:
    """A worker's stored model list (the same few strings, parsed on every round)."""
    return frozenset(json.loads(models_json))


def is_online(row: Worker, stamp: float, grace_s: float) -> bool:
    """Online, heartbeating within the grace period, and not revoked."""
    fresh = row.last_seen is not None and row.last_seen >= stamp - grace_s
    return bool(row.revoked_at is None and row.state == "online" and fresh)


class WorkerPresence:
    def __init__(self, db: pw.Database, *, grace_s: float) -> None:
        self.db = db
        self.grace_s = grace_s
        self._offer_cache: tuple[float, list[str], FleetModels] | None = None

    def record_status(self, status: WorkerStatus) -> bool:
        """Apply a worker's (retained) status. A death whose session is not the current
        one is stale and ignored, so it never overwrites a newer birth."""
        live = (Worker.id == status.worker_id) & Worker.revoked_at.is_null()
        if status.state == "offline":
            changed = (
                Worker.update(state="offline")
                .where(live & (Worker.session_id == status.session_id))
                .execute(self.db)
            )
            return bool(changed == 1)
        models = sorted({normalize_model(m) for m in status.models})
        loaded = sorted({normalize_model(m) for m in status.loaded_models})
        changed = (
            Worker.update(
                session_id=status.session_id,
                state=status.state,
                last_seen=time.time(),
                models=json.dumps(models),
                loaded_models=json.dumps(loaded),
                capacity=status.capacity,
                simulated=status.simulated,
                version=status.version[:64],
            )
            .where(live)
            .execute(self.db)
        )
        return bool(changed == 1)

    def record_heartbeat(self, beat: Heartbeat) -> bool:
        """A sign of life, if it comes from the worker's current session."""
        return bool(self.record_heartbeats([beat]))

    def registered(self, worker_id: str) -> bool:
        """A worker of the farm's, not revoked (whatever its session)."""
        return sql.execute(self.db, q.LIVE_KEY_HASH, (worker_id,)).fetchone() is not None

    def record_heartbeats(self, beats: list[Heartbeat]) -> list[Heartbeat]:
        """Several signs of life in one transaction; those from a current session."""
        stamp = time.time()
        fresh: list[Heartbeat] = []
        with write_transaction(self.db):
            for beat in beats:
                params = (stamp, beat.worker_id, beat.session_id)
                if sql.execute(self.db, q.HEARTBEAT, params).rowcount == 1:
                    fresh.append(beat)
        return fresh

    def online(self) -> list[WorkerLoad]:
        """Workers that may get a job now: online, fresh, not revoked, not quarantined.
        (Every dispatch round asks: a hand-written statement.)"""
        stamp = time.time()
        rows = sql.execute(self.db, q.AVAILABLE, (stamp - self.grace_s, stamp))
        counts = active_counts(self.db)
        return [
            WorkerLoad(
                worker, model_names(models), model_names(loaded), capacity, counts.get(worker, 0)
            )
            for worker, models, loaded, capacity in rows
        ]

    def fleet_models(self, preferred: list[str]) -> FleetModels:
        """What the online workers serve (each model picker and, at most once a second,
        each message asks: a hand-written statement)."""
        rows = sql.execute(self.db, q.FLEET, (time.time() - self.grace_s,)).fetchall()
        served: set[str] = set()
        loaded: set[str] = set()
        for models, loaded_models, _ in rows:
            served.update(model_names(models))
            loaded.update(model_names(loaded_models))
        order = [normalize_model(m) for m in preferred]
        ranked = [m for m in order if m in served] + sorted(served - set(order))
        models = [display_model(m) for m in ranked]
        return FleetModels(
            models=models,
            unavailable=[display_model(m) for m in dict.fromkeys(order) if m not in served],
            default_model=models[0] if models else None,
            workers_online=len(rows),
            simulated=bool(rows) and all(bool(simulated) for _, _, simulated in rows),
            loaded=[display_model(m) for m in sorted(loaded)],
        )

    def offered_model(self, requested: str | None, preferred: list[str]) -> str | None:
        """The model a request gets: the farm's default when none is asked for, else the
        requested one if the fleet (or the preferred list) offers it; None if it is not."""
        stamp = time.monotonic()
        cached = self._offer_cache
        if cached is not None and cached[0] > stamp - 1.0 and cached[1] == preferred:
            fleet = cached[2]
        else:  # every message asks: the fleet is looked at most once a second
            fleet = self.fleet_models(preferred)
            self._offer_cache = (stamp, list(preferred), fleet)
        if requested is None:
            return fleet.default_model or display_model(normalize_model(preferred[0]))
        known = {normalize_model(m) for m in [*fleet.models, *preferred]}
        wanted = normalize_model(requested)
        return display_model(wanted) if wanted in known else None
