"""API keys are checked (scrypt) off the coordinator's database thread: a slow check
holds up nobody else's database work, and concurrent requests with one key share it. The
same for the keys the admin API issues: their hashes are made off that thread too."""

import asyncio
import hashlib
import secrets
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import peewee as pw
import pytest

from coordinator.db.runner import DbRunner
from coordinator.db.tables import ApiKey
from coordinator.keys.api_keys import ApiKeyInfo, ApiKeyStore
from coordinator.keys.checks import KeyChecker
from tests.brokers import mosquitto
from tests.farm import running_farm, wait_until


def make_slow(db: pw.Database, key_id: str, key: str) -> None:
    """Store the key's hash at 16 times the usual cost (scrypt p=16): its check then
    takes long enough to see what else happens meanwhile."""
    n, r, p = 2**14, 8, 16
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(key.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    with db.connection_context():
        ApiKey.update(key_hash=f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}").where(
            ApiKey.id == key_id
        ).execute()


async def test_a_slow_key_check_holds_up_no_one_elses_database_work(tmp_path: Path) -> None:
    async with mosquitto() as broker, running_farm(tmp_path, broker, webapp=False) as farm:
        db = farm.coordinator.chat.db
        info, key = await farm.coordinator.runner.call(ApiKeyStore(db).create, "slow")
        await farm.coordinator.runner.call(make_slow, db, info.id, key)
        token = farm.webapp_settings.service_token.get_secret_value()
        async with httpx.AsyncClient(
            base_url=farm.coordinator_url + "/api/v1/programmatic",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ) as api:
            finished: list[str] = []

            async def call(name: str, method: str, path: str, body: object = None) -> int:
                response = await api.request(method, path, json=body)
                finished.append(name)
                return response.status_code

            checking = asyncio.create_task(
                call("key check", "POST", "/keys/check", {"api_key": key})
            )
            await asyncio.sleep(0.05)  # the check has started
            # /models reads the fleet on the database thread.
            assert await call("models", "GET", "/models") == 200
            assert await checking == 200
            assert finished == ["models", "key check"]


ADMIN_TOKEN = "admin-" + "k" * 30


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/workers", {"name": "new worker"}, 201),
        ("/workers/spare/rotate", None, 200),
        ("/api-keys", {"name": "new client"}, 201),
    ],
    ids=["add a worker", "rotate a worker's key", "create an API key"],
)
async def test_issuing_a_key_holds_up_no_one_elses_database_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, body: object, expected: int
) -> None:
    settings = {"admin_token": ADMIN_TOKEN}
    async with (
        mosquitto() as broker,
        running_farm(tmp_path, broker, webapp=False, coordinator_settings=settings) as farm,
    ):
        admin = farm.admin(ADMIN_TOKEN)
        spare = await admin.post("/workers", json={"name": "spare"})  # not connected
        assert spare.status_code == 201
        hashing, hashed = threading.Event(), threading.Event()
        scrypt = hashlib.scrypt

        def slow_scrypt(*args: Any, **kwargs: Any) -> bytes:
            """scrypt, a second slower, saying when it starts and ends."""
            hashing.set()
            time.sleep(1.0)
            try:
                return scrypt(*args, **kwargs)
            finally:
                hashed.set()

        monkeypatch.setattr(hashlib, "scrypt", slow_scrypt)
        token = farm.webapp_settings.service_token.get_secret_value()
        async with httpx.AsyncClient(
            base_url=farm.coordinator_url, headers={"Authorization": f"Bearer {token}"}
        ) as api:
            issuing = asyncio.create_task(admin.post(path, json=body))
            await wait_until(hashing.is_set)
            # While the key is being hashed, the database thread serves others.
            assert (await api.get("/api/v1/programmatic/models")).status_code == 200
            assert not hashed.is_set()
            assert (await issuing).status_code == expected
            assert hashed.is_set()


class CountedKeys(ApiKeyStore):
    """The real store, counting its look-ups of a key's row."""

    def __init__(self, db: pw.Database) -> None:
        super().__init__(db)
        self.looked_up = 0

    def candidate(self, key: str) -> tuple[str, str] | None:
        self.looked_up += 1
        return super().candidate(key)


@asynccontextmanager
async def a_key(db: pw.Database) -> AsyncIterator[tuple[CountedKeys, DbRunner, ApiKeyInfo, str]]:
    store = CountedKeys(db)
    info, key = store.create("a client")
    runner = DbRunner(db)
    try:
        yield store, runner, info, key
    finally:
        runner.close()


async def test_one_check_for_concurrent_requests_and_wrong_keys_refused(
    db: pw.Database,
) -> None:
    async with a_key(db) as (store, runner, info, key):
        checker = KeyChecker(runner, store)
        results = await asyncio.gather(*(checker.check(key) for _ in range(5)))
        assert [r.id if r else None for r in results] == [info.id] * 5
        assert store.looked_up == 1
        assert await checker.check(key) is not None  # remembered: no new look-up
        assert store.looked_up == 1

        wrong = key[:-1] + ("A" if key[-1] != "A" else "B")  # real key id, wrong secret
        assert await checker.check(wrong) is None
        assert await checker.check("lfa_nosuchkey_secret") is None
        await runner.call(store.revoke, info.id)
        fresh = KeyChecker(runner, store)
        assert await fresh.check(key) is None


async def test_a_busy_key_is_checked_again_in_the_background(db: pw.Database) -> None:
    async with a_key(db) as (store, runner, info, key):
        checker = KeyChecker(runner, store, cache_s=2.0, refresh_s=0.2)
        assert await checker.check(key) is not None
        first_use = store.get(info.id).last_used_at
        await asyncio.sleep(0.3)
        # Past the refresh point: answered from memory, checked again meanwhile.
        assert await checker.check(key) is not None
        await wait_until(lambda: store.get(info.id).last_used_at != first_use)  # re-checked
        assert store.looked_up == 2

        await runner.call(store.revoke, info.id)
        await asyncio.sleep(0.3)
        assert await checker.check(key) is not None  # still remembered; its re-check starts
        await wait_until(lambda: store.looked_up == 3)
        await asyncio.sleep(0.05)
        assert await checker.check(key) is None  # the re-check found it revoked
