"""API keys for programmatic clients (the OpenAI-compatible API).

A key reads ``lfa_<id>_<secret>``: the id finds its row, and the whole key is checked
against its stored SHA-256 (:mod:`coordinator.keys.hashing`) on every request, so a
revoked key stops working on its next request. The key itself is shown once and never
stored. Each key owns a user row, so its conversations are stored like everyone's, and
has a limit on how many of its replies may be generating at once.
"""

import asyncio
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import cast

import peewee as pw

from coordinator.db import sql
from coordinator.db.database import write_transaction
from coordinator.db.runner import DbRunner
from coordinator.db.tables import ApiKey, User
from coordinator.errors import NotFound
from coordinator.jobs.states import LIVE, sql_list
from coordinator.keys.hashing import hash_key, needs_upgrade, verify_key

API_KEY_PREFIX = "lfa_"
USED_EVERY_S = 60.0  # last_used_at is written at most this often (not on every request)
_LIVE_JOBS = "SELECT COUNT(*) FROM job WHERE api_key_id = %s AND state IN " + sql_list(LIVE)
_UPGRADE = "UPDATE api_key SET key_hash = %s WHERE id = %s AND key_hash = %s AND revoked_at IS NULL"
# Old, slow hashes are checked at most this many at once (each scrypt takes 16 MiB).
_LEGACY_CHECKS = threading.BoundedSemaphore(2)


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    id: str
    name: str
    user_id: str
    max_concurrent: int
    created_at: float
    revoked_at: float | None
    last_used_at: float | None
    active_jobs: int


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new key and its hash, not stored yet."""

    key_id: str
    key: str  # shown once, never stored
    key_hash: str


@dataclass(frozen=True, slots=True)
class LegacyHash:
    """A live key stored with the old, slow hash: check it off the database thread."""

    key_id: str
    stored: str


def issue_key() -> IssuedKey:
    key_id = uuid.uuid4().hex[:16]
    key = f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"
    return IssuedKey(key_id, key, hash_key(key))


async def check_api_key(runner: DbRunner, keys: "ApiKeyStore", key: str) -> ApiKeyInfo | None:
    """The live key's record, or None for a wrong, unknown or revoked key. A key still
    stored with the old hash is checked in a thread of its own (it costs ~30 ms, which
    would hold up all of the coordinator's database work), then stored with the new one."""
    found = await runner.call(keys.check, key)
    if not isinstance(found, LegacyHash):
        return found
    ok = await asyncio.to_thread(_verify_legacy, key, found.stored)
    return await runner.call(keys.upgrade, found, key) if ok else None


def _verify_legacy(key: str, stored: str) -> bool:
    with _LEGACY_CHECKS:
        return verify_key(key, stored)


class ApiKeyStore:
    def __init__(self, db: pw.Database) -> None:
        self.db = db

    def create(
        self, name: str, max_concurrent: int = 4, issued: IssuedKey | None = None
    ) -> tuple[ApiKeyInfo, str]:
        """Store a new key (``issued``, or one issued here) for a client called ``name``."""
        if not 1 <= max_concurrent <= 1000:
            raise ValueError("max_concurrent must be between 1 and 1000")
        if not name.strip() or len(name) > 200:
            raise ValueError("an API key needs a name of 1 to 200 characters")
        issued = issued or issue_key()
        with write_transaction(self.db):
            user_id = uuid.uuid4().hex
            User.insert(id=user_id, name=f"API: {name.strip()[:58]}").execute(self.db)
            ApiKey.insert(
                id=issued.key_id,
                name=name.strip(),
                key_hash=issued.key_hash,
                user_id=user_id,
                max_concurrent=max_concurrent,
            ).execute(self.db)
        return self.get(issued.key_id), issued.key

    def get(self, key_id: str) -> ApiKeyInfo:
        row = ApiKey.select().where(ApiKey.id == key_id).first(self.db)
        if row is None:
            raise NotFound(f"no API key {key_id}")
        return self._info(row)

    def list_keys(self) -> list[ApiKeyInfo]:
        rows = ApiKey.select().order_by(ApiKey.created_at).execute(self.db)
        return [self._info(r) for r in rows]

    def revoke(self, key_id: str) -> None:
        changed = (
            ApiKey.update(revoked_at=time.time())
            .where((ApiKey.id == key_id) & ApiKey.revoked_at.is_null())
            .execute(self.db)
        )
        if changed != 1:
            raise NotFound(f"no active API key {key_id}")

    def check(self, key: str) -> ApiKeyInfo | LegacyHash | None:
        """The live key ``key`` names if it is that key; :class:`LegacyHash` when its
        stored hash is the old kind (see :func:`check_api_key`); else None."""
        row = self._live_row(key)
        if row is None:
            return None
        if needs_upgrade(row.key_hash):
            return LegacyHash(row.id, row.key_hash)
        return self._used(row) if verify_key(key, row.key_hash) else None

    def upgrade(self, legacy: LegacyHash, key: str) -> ApiKeyInfo | None:
        """The key checked out against its old hash: store the new one in its place."""
        sql.execute(self.db, _UPGRADE, (hash_key(key), legacy.key_id, legacy.stored))
        row = self._live(legacy.key_id)
        return None if row is None else self._used(row)

    def _live_row(self, key: str) -> ApiKey | None:
        key_id, _, secret = key.removeprefix(API_KEY_PREFIX).partition("_")
        if not key.startswith(API_KEY_PREFIX) or not key_id or not secret:
            return None
        return self._live(key_id)

    def _live(self, key_id: str) -> ApiKey | None:
        live = (ApiKey.id == key_id) & ApiKey.revoked_at.is_null()
        return cast(ApiKey | None, ApiKey.select().where(live).first(self.db))

    def _used(self, row: ApiKey) -> ApiKeyInfo:
        stamp = time.time()
        if row.last_used_at is None or row.last_used_at < stamp - USED_EVERY_S:
            ApiKey.update(last_used_at=stamp).where(ApiKey.id == row.id).execute(self.db)
            row.last_used_at = stamp
        return self._info(row)

    def _info(self, row: ApiKey) -> ApiKeyInfo:
        (active,) = sql.execute(self.db, _LIVE_JOBS, (row.id,)).fetchone()
        return ApiKeyInfo(
            id=row.id,
            name=row.name,
            user_id=row.user_id,
            max_concurrent=row.max_concurrent,
            created_at=row.created_at,
            revoked_at=row.revoked_at,
            last_used_at=row.last_used_at,
            active_jobs=int(active),
        )
