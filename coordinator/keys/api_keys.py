"""API keys for programmatic clients (the OpenAI-compatible API).

A key reads ``lfa_<id>_<secret>``: the id finds its row, the secret is checked against a
salted scrypt hash (the key itself is shown once and never stored). Each key owns a user
row, so its conversations are stored like everyone's, and has a limit on how many of its
replies may be generating at once.
"""

import secrets
import time
import uuid
from dataclasses import dataclass

import peewee as pw

from coordinator.db.database import write_transaction
from coordinator.db.tables import ApiKey, Job, User
from coordinator.errors import NotFound
from coordinator.keys.hashing import hash_key

API_KEY_PREFIX = "lfa_"
ACTIVE_JOB_STATES = ("queued", "assigned", "running")


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


def issue_key() -> IssuedKey:
    """A new key. Slow by design (scrypt, tens of ms): the coordinator calls it off its
    database thread, so that no one else's database work waits for it."""
    key_id = uuid.uuid4().hex[:16]
    key = f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"
    return IssuedKey(key_id, key, hash_key(key))


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
            user = User.create(id=uuid.uuid4().hex, name=f"API: {name.strip()[:58]}")
            ApiKey.create(
                id=issued.key_id,
                name=name.strip(),
                key_hash=issued.key_hash,
                user_id=user.id,
                max_concurrent=max_concurrent,
            )
        return self.get(issued.key_id), issued.key

    def get(self, key_id: str) -> ApiKeyInfo:
        row = ApiKey.get_or_none(ApiKey.id == key_id)
        if row is None:
            raise NotFound(f"no API key {key_id}")
        return self._info(row)

    def list_keys(self) -> list[ApiKeyInfo]:
        return [self._info(r) for r in ApiKey.select().order_by(ApiKey.created_at)]

    def revoke(self, key_id: str) -> None:
        changed = (
            ApiKey.update(revoked_at=time.time())
            .where((ApiKey.id == key_id) & ApiKey.revoked_at.is_null())
            .execute()
        )
        if changed != 1:
            raise NotFound(f"no active API key {key_id}")

    def candidate(self, key: str) -> tuple[str, str] | None:
        """(key id, stored hash) of the live key ``key`` names, its secret not yet checked
        (coordinator.keys.checks checks it with scrypt, off the database thread)."""
        body = key.removeprefix(API_KEY_PREFIX)
        key_id, _, secret = body.partition("_")
        if not key.startswith(API_KEY_PREFIX) or not key_id or not secret:
            return None
        row = ApiKey.get_or_none((ApiKey.id == key_id) & ApiKey.revoked_at.is_null())
        return None if row is None else (key_id, str(row.key_hash))

    def mark_used(self, key_id: str) -> ApiKeyInfo | None:
        """After its secret checked out: the key's record, None if revoked meanwhile."""
        row = ApiKey.get_or_none((ApiKey.id == key_id) & ApiKey.revoked_at.is_null())
        if row is None:
            return None
        ApiKey.update(last_used_at=time.time()).where(ApiKey.id == key_id).execute()
        return self._info(row)

    @staticmethod
    def _info(row: ApiKey) -> ApiKeyInfo:
        active = (
            Job.select()
            .where((Job.api_key_id == row.id) & Job.state.in_(ACTIVE_JOB_STATES))
            .count()
        )
        return ApiKeyInfo(
            id=row.id,
            name=row.name,
            user_id=row.user_id,
            max_concurrent=row.max_concurrent,
            created_at=row.created_at,
            revoked_at=row.revoked_at,
            last_used_at=row.last_used_at,
            active_jobs=active,
        )
