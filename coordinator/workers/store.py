"""Workers: registration and keys (admin), and presence (from status and heartbeats)."""

import functools
import json
import time
from dataclasses import dataclass

import peewee as pw

from coordinator.db import sql
from coordinator.db.database import write_transaction
from coordinator.db.tables import Worker
from coordinator.errors import Conflict, NotFound
from coordinator.jobs.store import active_counts
from coordinator.keys.hashing import derive_key, hash_key, new_key, new_nonce
from farm_protocol.acl import is_reserved
from farm_protocol.chat import FleetModels
from farm_protocol.ids import check_id, slugify
from farm_protocol.models import display_model, normalize_model
from farm_protocol.payloads import Heartbeat, WorkerStatus


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    name: str
    created_at: float
    revoked_at: float | None
    state: str
    online: bool
    last_seen: float | None
    models: list[str]
    loaded_models: list[str]
    capacity: int
    active_jobs: int
    simulated: bool
    version: str
    quarantined_until: float | None
    jobs_succeeded: int
    jobs_failed: int
    chars_generated: int


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """An online worker as dispatch sees it."""

    id: str
    models: frozenset[str]
    loaded: frozenset[str]
    capacity: int
    active: int


@functools.lru_cache(maxsize=4096)
def _names(models_json: str) -> frozenset[str]:
    """A worker's stored model list (the same few strings, parsed on every round)."""
    return frozenset(json.loads(models_json))


class WorkerStore:
    def __init__(self, db: pw.Database, *, grace_s: float, key_secret: str = "") -> None:
        self.db = db
        self.grace_s = grace_s
        self.key_secret = key_secret
        self._offer_cache: tuple[float, list[str], FleetModels] | None = None

    def issue(self, worker_id: str) -> tuple[str, str]:
        """A new key for ``worker_id`` and the nonce it was derived from ("" if random).
        Not stored: see :meth:`insert` and :meth:`set_key`, which take its hash."""
        if not self.key_secret:
            return new_key(), ""
        nonce = new_nonce()
        return derive_key(self.key_secret, worker_id, nonce), nonce

    def broker_passwords(self) -> dict[str, str | None]:
        """Every active worker's key, where it can be derived again (for the broker)."""
        rows = Worker.select(Worker.id, Worker.key_nonce).where(Worker.revoked_at.is_null())
        return {
            str(r.id): derive_key(self.key_secret, r.id, r.key_nonce)
            if self.key_secret and r.key_nonce
            else None
            for r in rows
        }

    # --- administration ----------------------------------------------------------------

    def add(self, name: str, worker_id: str | None = None) -> tuple[WorkerInfo, str]:
        """Register a worker in one step (the command line). Returns it and its key; the
        key is never stored in clear. The admin API takes the same steps, hashing the key
        off the database thread. The key is hashed (scrypt, tens of ms) before the write,
        so that the write lock is not held meanwhile; an id made from the name and taken
        since by someone else means choosing again."""
        attempts = 0
        while True:
            wid = self.new_id(name, worker_id)
            key, nonce = self.issue(wid)
            key_hash = hash_key(key)
            try:
                return self.insert(wid, name, key_hash, nonce), key
            except Conflict:
                attempts += 1
                if worker_id or attempts == 3:
                    raise

    def new_id(self, name: str, worker_id: str | None = None) -> str:
        """The id a new worker gets: ``worker_id`` if given (and free), else one made
        from its name."""
        wid = check_id(worker_id, "worker id") if worker_id else self._free_id(name)
        if is_reserved(wid):
            raise ValueError(f"worker ids may not be {wid!r}: 'farm-' and 'admin' are reserved")
        if Worker.get_or_none(Worker.id == wid) is not None:
            raise Conflict(f"worker {wid} already exists")
        return wid

    def insert(self, worker_id: str, name: str, key_hash: str, nonce: str) -> WorkerInfo:
        """Store a new worker with its key's hash (Conflict if the id was taken since
        :meth:`new_id` gave it)."""
        try:
            with write_transaction(self.db):
                Worker.create(id=worker_id, name=name, key_hash=key_hash, key_nonce=nonce)
        except pw.IntegrityError as exc:
            raise Conflict(f"worker {worker_id} already exists") from exc
        return self.get(worker_id)

    def _free_id(self, name: str) -> str:
        base = slugify(name)
        if is_reserved(base):
            base = f"w-{base}"
        candidate, n = base, 2
        while Worker.get_or_none(Worker.id == candidate) is not None:
            candidate, n = f"{base}-{n}", n + 1
        return candidate

    def rotate(self, worker_id: str) -> str:
        key, nonce = self.new_key_for(worker_id)
        self.set_key(worker_id, key_hash=hash_key(key), nonce=nonce)
        return key

    def new_key_for(self, worker_id: str) -> tuple[str, str]:
        """A fresh key (and its nonce) for an active worker, not stored yet: the broker
        learns it first, so a failed broker update leaves the old key working."""
        if Worker.get_or_none((Worker.id == worker_id) & Worker.revoked_at.is_null()) is None:
            raise NotFound(f"no active worker {worker_id}")
        return self.issue(worker_id)

    def set_key(self, worker_id: str, *, key_hash: str, nonce: str) -> None:
        """Store a worker's new key: its hash (``coordinator.keys.hashing.hash_key``) and nonce."""
        changed = (
            Worker.update(key_hash=key_hash, key_nonce=nonce)
            .where((Worker.id == worker_id) & Worker.revoked_at.is_null())
            .execute()
        )
        if changed != 1:
            raise NotFound(f"no active worker {worker_id}")

    def revoke(self, worker_id: str) -> None:
        changed = (
            Worker.update(revoked_at=time.time(), state="offline")
            .where((Worker.id == worker_id) & Worker.revoked_at.is_null())
            .execute()
        )
        if changed != 1:
            raise NotFound(f"no active worker {worker_id}")

    def get(self, worker_id: str) -> WorkerInfo:
        row = Worker.get_or_none(Worker.id == worker_id)
        if row is None:
            raise NotFound(f"no worker {worker_id}")
        return self._info(row, active_counts().get(worker_id, 0), time.time())

    def list_workers(self) -> list[WorkerInfo]:
        counts = active_counts()
        stamp = time.time()
        return [
            self._info(r, counts.get(r.id, 0), stamp) for r in Worker.select().order_by(Worker.id)
        ]

    def _info(self, row: Worker, active: int, stamp: float) -> WorkerInfo:
        return WorkerInfo(
            id=row.id,
            name=row.name,
            created_at=row.created_at,
            revoked_at=row.revoked_at,
            state=row.state,
            online=self._is_online(row, stamp),
            last_seen=row.last_seen,
            models=json.loads(row.models),
            loaded_models=json.loads(row.loaded_models),
            capacity=row.capacity,
            active_jobs=active,
            simulated=row.simulated,
            version=row.version,
            quarantined_until=(
                row.quarantined_until
                if row.quarantined_until and row.quarantined_until > stamp
                else None
            ),
            jobs_succeeded=row.jobs_succeeded,
            jobs_failed=row.jobs_failed,
            chars_generated=row.chars_generated,
        )

    def _is_online(self, row: Worker, stamp: float) -> bool:
        fresh = row.last_seen is not None and row.last_seen >= stamp - self.grace_s
        return bool(row.revoked_at is None and row.state == "online" and fresh)

    # --- presence ----------------------------------------------------------------------

    def record_status(self, status: WorkerStatus) -> bool:
        """Apply a worker's (retained) status. A death whose session is not the current
        one is stale and ignored, so it never overwrites a newer birth."""
        live = (Worker.id == status.worker_id) & Worker.revoked_at.is_null()
        if status.state == "offline":
            changed = (
                Worker.update(state="offline")
                .where(live & (Worker.session_id == status.session_id))
                .execute()
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
            .execute()
        )
        return bool(changed == 1)

    def record_heartbeat(self, beat: Heartbeat) -> bool:
        """A sign of life, if it comes from the worker's current session."""
        return bool(self.record_heartbeats([beat]))

    def record_heartbeats(self, beats: list[Heartbeat]) -> list[Heartbeat]:
        """Several signs of life in one transaction; those from a current session."""
        stamp = time.time()
        fresh = []
        with write_transaction(self.db):
            for beat in beats:
                changed = (
                    Worker.update(last_seen=stamp)
                    .where(
                        (Worker.id == beat.worker_id)
                        & Worker.revoked_at.is_null()
                        & (Worker.session_id == beat.session_id)
                    )
                    .execute()
                )
                if changed == 1:
                    fresh.append(beat)
        return fresh

    def online(self) -> list[WorkerLoad]:
        """Workers that may get a job now: online, fresh, not revoked, not quarantined.
        (Every dispatch round asks: a hand-written statement, see coordinator.db.sql.)"""
        stamp = time.time()
        rows = sql.execute(
            self.db,
            "SELECT id, models, loaded_models, capacity FROM worker WHERE state = 'online'"
            " AND revoked_at IS NULL AND last_seen >= %s"
            " AND (quarantined_until IS NULL OR quarantined_until <= %s)",
            (stamp - self.grace_s, stamp),
        )
        counts = active_counts()
        return [
            WorkerLoad(worker, _names(models), _names(loaded), capacity, counts.get(worker, 0))
            for worker, models, loaded, capacity in rows
        ]

    def fleet_models(self, preferred: list[str]) -> FleetModels:
        stamp = time.time()
        rows = [
            r
            for r in Worker.select().where(Worker.revoked_at.is_null())
            if self._is_online(r, stamp)
        ]
        served: set[str] = set()
        for row in rows:
            served.update(json.loads(row.models))
        order = [normalize_model(m) for m in preferred]
        ranked = [m for m in order if m in served] + sorted(served - set(order))
        models = [display_model(m) for m in ranked]
        return FleetModels(
            models=models,
            default_model=models[0] if models else None,
            workers_online=len(rows),
            simulated=bool(rows) and all(r.simulated for r in rows),
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
