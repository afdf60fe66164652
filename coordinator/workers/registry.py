"""Registered workers and their keys: adding, rotating, revoking (the admin API and
``llama-farm workers``), and what an admin sees of each."""

import json
import time
from dataclasses import dataclass

import peewee as pw

from coordinator.db import sql
from coordinator.db.database import write_transaction
from coordinator.db.tables import Worker
from coordinator.errors import Conflict, NotFound
from coordinator.jobs.queue import active_counts
from coordinator.keys.hashing import (
    derive_key,
    hash_key,
    needs_upgrade,
    new_key,
    new_nonce,
    verify_key,
)
from coordinator.workers import statements as q
from coordinator.workers.presence import is_online
from farm_protocol.acl import is_reserved
from farm_protocol.ids import check_id, slugify

_ADD_ATTEMPTS = 10  # tries of an add whose name-made id others keep taking


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


class WorkerRegistry:
    def __init__(self, db: pw.Database, *, grace_s: float, key_secret: str = "") -> None:
        self.db = db
        self.grace_s = grace_s
        self.key_secret = key_secret

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
            for r in rows.execute(self.db)
        }

    def add(self, name: str, worker_id: str | None = None) -> tuple[WorkerInfo, str]:
        """Register a worker in one step (the admin API and ``llama-farm workers add``).
        Returns it and its key; the key is never stored in clear.

        An id made from the name may be taken by another add (another admin, another
        process) at any moment between choosing it and storing the worker: it is then
        chosen again. Each such conflict is another add of the same name succeeding, so
        N adds at once need at most N tries each."""
        attempts = 0
        while True:
            try:
                wid = self.new_id(name, worker_id)
                key, nonce = self.issue(wid)
                return self.insert(wid, name, hash_key(key), nonce), key
            except Conflict:
                attempts += 1
                if worker_id or attempts == _ADD_ATTEMPTS:
                    raise

    def new_id(self, name: str, worker_id: str | None = None) -> str:
        """The id a new worker gets: ``worker_id`` if given (and free), else one made
        from its name."""
        wid = check_id(worker_id, "worker id") if worker_id else self._free_id(name)
        if is_reserved(wid):
            raise ValueError(f"worker ids may not be {wid!r}: 'farm-' and 'admin' are reserved")
        if self._exists(Worker.id == wid):
            raise Conflict(f"worker {wid} already exists")
        return wid

    def insert(self, worker_id: str, name: str, key_hash: str, nonce: str) -> WorkerInfo:
        """Store a new worker with its key's hash (Conflict if the id was taken since
        :meth:`new_id` gave it)."""
        try:
            with write_transaction(self.db):
                Worker.insert(id=worker_id, name=name, key_hash=key_hash, key_nonce=nonce).execute(
                    self.db
                )
        except pw.IntegrityError as exc:
            raise Conflict(f"worker {worker_id} already exists") from exc
        return self.get(worker_id)

    def _free_id(self, name: str) -> str:
        base = slugify(name)
        if is_reserved(base):
            base = f"w-{base}"
        candidate, n = base, 2
        while self._exists(Worker.id == candidate):
            candidate, n = f"{base}-{n}", n + 1
        return candidate

    def check_key(self, worker_id: str, key: str) -> bool:
        """Whether ``key`` is the live worker's key (the dev broker's login check). A key
        still stored with the old, slow hash is stored with the fast one once it checks
        out (see :mod:`coordinator.keys.hashing`)."""
        row = sql.execute(self.db, q.LIVE_KEY_HASH, (worker_id,)).fetchone()
        if row is None or not verify_key(key, str(row[0])):
            return False
        if needs_upgrade(str(row[0])):
            self.upgrade_key(worker_id, key)
        return True

    def upgrade_key(self, worker_id: str, key: str) -> bool:
        """Store the fast hash of ``key`` in place of its old, slow one; False if the
        stored hash is not of the old kind (any more)."""
        changed = sql.execute(
            self.db, q.UPGRADE_KEY_HASH, (hash_key(key), worker_id, "scrypt$%")
        ).rowcount
        return bool(changed == 1)

    def rotate(self, worker_id: str) -> str:
        key, nonce = self.new_key_for(worker_id)
        self.set_key(worker_id, key_hash=hash_key(key), nonce=nonce)
        return key

    def new_key_for(self, worker_id: str) -> tuple[str, str]:
        """A fresh key (and its nonce) for an active worker, not stored yet: the broker
        learns it first, so a failed broker update leaves the old key working."""
        if not self._exists((Worker.id == worker_id) & Worker.revoked_at.is_null()):
            raise NotFound(f"no active worker {worker_id}")
        return self.issue(worker_id)

    def _exists(self, where: pw.Expression) -> bool:
        return bool(Worker.select().where(where).exists(self.db))

    def set_key(self, worker_id: str, *, key_hash: str, nonce: str) -> None:
        """Store a worker's new key: its hash (``coordinator.keys.hashing.hash_key``) and nonce."""
        changed = (
            Worker.update(key_hash=key_hash, key_nonce=nonce)
            .where((Worker.id == worker_id) & Worker.revoked_at.is_null())
            .execute(self.db)
        )
        if changed != 1:
            raise NotFound(f"no active worker {worker_id}")

    def revoke(self, worker_id: str) -> None:
        changed = (
            Worker.update(revoked_at=time.time(), state="offline")
            .where((Worker.id == worker_id) & Worker.revoked_at.is_null())
            .execute(self.db)
        )
        if changed != 1:
            raise NotFound(f"no active worker {worker_id}")

    def get(self, worker_id: str) -> WorkerInfo:
        row = Worker.select().where(Worker.id == worker_id).first(self.db)
        if row is None:
            raise NotFound(f"no worker {worker_id}")
        return self._info(row, active_counts(self.db).get(worker_id, 0), time.time())

    def list_workers(self) -> list[WorkerInfo]:
        counts = active_counts(self.db)
        stamp = time.time()
        rows = Worker.select().order_by(Worker.id).execute(self.db)
        return [self._info(r, counts.get(r.id, 0), stamp) for r in rows]

    def _info(self, row: Worker, active: int, stamp: float) -> WorkerInfo:
        return WorkerInfo(
            id=row.id,
            name=row.name,
            created_at=row.created_at,
            revoked_at=row.revoked_at,
            state=row.state,
            online=is_online(row, stamp, self.grace_s),
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
