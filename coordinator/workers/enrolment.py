"""Enrolment tokens: a new worker's key goes only to the machine that redeems the token
(``fleet-worker join``), once, before the token expires."""

import hashlib
import secrets
import time

import peewee as pw

from coordinator.db.database import write_transaction
from coordinator.db.tables import Enrolment, Worker
from coordinator.errors import NotFound


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Enrolments:
    def __init__(self, db: pw.Database, ttl_s: float = 86_400.0) -> None:
        self.db = db
        self.ttl_s = ttl_s

    def issue(self, worker_id: str) -> str:
        """A new token for ``worker_id`` (192 random bits; only its hash is stored)."""
        token = "lfe_" + secrets.token_urlsafe(24)
        stamp = time.time()
        Enrolment.insert(
            token_hash=_hash(token),
            worker=worker_id,
            created_at=stamp,
            expires_at=stamp + self.ttl_s,
        ).execute(self.db)
        return token

    def give_back(self, token: str) -> None:
        """Un-spend ``token`` (its key could not be made): it can be tried again."""
        Enrolment.update(used_at=None).where(Enrolment.token_hash == _hash(token)).execute(self.db)

    def redeem(self, token: str) -> str:
        """Spend ``token``: the worker it enrols (still active). NotFound when it is unknown,
        spent, expired, or its worker was revoked since."""
        stamp = time.time()
        with write_transaction(self.db):
            spent = (
                Enrolment.update(used_at=stamp)
                .where(
                    (Enrolment.token_hash == _hash(token))
                    & Enrolment.used_at.is_null()
                    & (Enrolment.expires_at > stamp)
                )
                .execute(self.db)
            )
            mine = Enrolment.select().where(Enrolment.token_hash == _hash(token))
            row = mine.first(self.db) if spent else None
            if row is None:
                raise NotFound(
                    "this join line is unknown, already used or expired: ask the farm's admin"
                    " for a new one (llama-farm workers enrol ID)"
                )
            active = Worker.select().where(
                (Worker.id == row.worker_id) & Worker.revoked_at.is_null()
            )
            if not active.exists(self.db):
                raise NotFound(f"worker {row.worker_id} was revoked: ask the farm's admin")
            return str(row.worker_id)
