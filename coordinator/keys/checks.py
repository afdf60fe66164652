"""Checking programmatic clients' API keys without stalling the coordinator.

A key's secret is checked against a scrypt hash, which costs ~30 ms of CPU by design.
That check runs in a thread of its own, at most ``PARALLEL_CHECKS`` at once (each takes
16 MiB), never on the database thread: there it held up every other statement of the
coordinator for those milliseconds, and a client sending wrong secrets for a real key id
could do that to everyone as often as it liked. Concurrent requests with the same
unchecked key share one check.

A key that checked out is remembered for ``cache_s`` by its SHA-256, so a busy client
does not pay scrypt per request (a revoked key stops working within that time). A key
used again after ``refresh_s`` of that is checked again in the
background while its requests go on, so a busy client never waits for scrypt after its
first request (it did, once a minute: the OpenAI API's p99 time to first token)."""

import asyncio
import hashlib
import time

from coordinator.db.runner import DbRunner
from coordinator.keys.api_keys import ApiKeyInfo, ApiKeyStore
from coordinator.keys.hashing import verify_key

CACHE_S = 60.0
REFRESH_S = 45.0
PARALLEL_CHECKS = 2


class KeyChecker:
    def __init__(
        self,
        runner: DbRunner,
        keys: ApiKeyStore,
        cache_s: float = CACHE_S,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.runner = runner
        self.keys = keys
        self.cache_s = cache_s
        self.refresh_s = refresh_s
        self._seen: dict[str, tuple[float, ApiKeyInfo]] = {}  # checked at (monotonic)
        self._checking: dict[str, asyncio.Task[ApiKeyInfo | None]] = {}
        self._slots = asyncio.Semaphore(PARALLEL_CHECKS)

    async def check(self, key: str) -> ApiKeyInfo | None:
        """The live key's record, or None for a wrong, unknown or revoked key."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        found = self._seen.get(digest)
        age = time.monotonic() - found[0] if found is not None else self.cache_s
        if found is not None and age < self.cache_s:
            if age >= self.refresh_s:
                self._checking_task(key, digest)  # in the background
            return found[1]
        return await asyncio.shield(self._checking_task(key, digest))

    def _checking_task(self, key: str, digest: str) -> "asyncio.Task[ApiKeyInfo | None]":
        """The running check of this key, started if there is none. A task of its own: a
        caller that goes away does not end the check the others are waiting for."""
        task = self._checking.get(digest)
        if task is None:
            task = asyncio.create_task(self._check(key, digest), name="API key check")
            self._checking[digest] = task
            task.add_done_callback(lambda done: self._settled(digest, done))
        return task

    def _settled(self, digest: str, task: "asyncio.Task[ApiKeyInfo | None]") -> None:
        del self._checking[digest]
        if not task.cancelled():
            task.exception()  # retrieved, even when every caller went away

    async def _check(self, key: str, digest: str) -> ApiKeyInfo | None:
        candidate = await self.runner.call(self.keys.candidate, key)
        if candidate is None:
            self._seen.pop(digest, None)
            return None
        key_id, stored = candidate
        async with self._slots:
            ok = await asyncio.to_thread(verify_key, key, stored)
        info = await self.runner.call(self.keys.mark_used, key_id) if ok else None
        if info is None:
            self._seen.pop(digest, None)  # revoked since it was remembered
        else:
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[digest] = (time.monotonic(), info)
        return info
