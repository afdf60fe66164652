"""Keys are stored as their SHA-256 and checked on every request: a wrong or revoked key
is refused at once. Rows from before, stored with scrypt, still verify, and are stored
with the fast hash once their key has checked out; their slow check runs off the
coordinator's database thread, so it holds up nobody else's database work."""

import asyncio
import hashlib
import secrets
import time
from pathlib import Path

import httpx
import peewee as pw

from coordinator.db.runner import DbRunner
from coordinator.db.tables import ApiKey, Worker
from coordinator.keys.api_keys import ApiKeyStore, check_api_key
from coordinator.keys.hashing import hash_key, needs_upgrade, verify_key
from coordinator.workers.registry import WorkerRegistry
from tests.brokers import mosquitto
from tests.farm import running_farm


def scrypt_hash(key: str, p: int = 1) -> str:
    """A key's hash as rows written before the fast hash hold it (p=16: 16 times slower)."""
    n, r, salt = 2**14, 8, secrets.token_bytes(16)
    digest = hashlib.scrypt(key.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def test_a_key_is_stored_as_its_sha256_and_checked_exactly() -> None:
    key = "lf_" + secrets.token_urlsafe(24)
    stored = hash_key(key)
    assert stored == "sha256$" + hashlib.sha256(key.encode()).hexdigest()
    assert key not in stored
    assert verify_key(key, stored)
    assert not verify_key(key[:-1] + ("A" if key[-1] != "A" else "B"), stored)
    assert not verify_key(key, "plain text")
    assert not verify_key(key, "scrypt$not$a$valid$hash")
    assert not needs_upgrade(stored)
    assert needs_upgrade(scrypt_hash(key))


async def test_api_keys_are_checked_on_every_request(db: pw.Database) -> None:
    store, runner = ApiKeyStore(db), DbRunner(db)
    try:
        info, key = await runner.call(store.create, "a client")
        assert ApiKey.get_by_id(info.id).key_hash == hash_key(key)
        found = await check_api_key(runner, store, key)
        assert found is not None
        assert found.id == info.id
        assert found.last_used_at is not None
        wrong = key[:-1] + ("A" if key[-1] != "A" else "B")  # the real key id, another secret
        assert await check_api_key(runner, store, wrong) is None
        assert await check_api_key(runner, store, "lfa_nosuchkey_secret") is None
        assert await check_api_key(runner, store, "not a key") is None
        await runner.call(store.revoke, info.id)
        assert await check_api_key(runner, store, key) is None  # its very next request
    finally:
        runner.close()


async def test_an_old_scrypt_api_key_still_works_and_is_upgraded(db: pw.Database) -> None:
    store, runner = ApiKeyStore(db), DbRunner(db)
    try:
        info, key = await runner.call(store.create, "from before")
        ApiKey.update(key_hash=scrypt_hash(key)).where(ApiKey.id == info.id).execute()
        wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
        assert await check_api_key(runner, store, wrong) is None
        assert needs_upgrade(ApiKey.get_by_id(info.id).key_hash)  # a wrong key changes nothing
        found = await check_api_key(runner, store, key)
        assert found is not None
        assert found.id == info.id
        assert ApiKey.get_by_id(info.id).key_hash == hash_key(key)
        assert await check_api_key(runner, store, key) is not None
    finally:
        runner.close()


def test_an_old_scrypt_worker_key_still_verifies_and_is_upgraded(db: pw.Database) -> None:
    registry = WorkerRegistry(db, grace_s=10)
    info, key = registry.add("old laptop")
    assert Worker.get_by_id(info.id).key_hash == hash_key(key)
    Worker.update(key_hash=scrypt_hash(key)).where(Worker.id == info.id).execute()
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert not registry.check_key(info.id, wrong)  # the dev broker's login check
    assert needs_upgrade(Worker.get_by_id(info.id).key_hash)
    assert registry.check_key(info.id, key)
    assert Worker.get_by_id(info.id).key_hash == hash_key(key)
    assert not registry.upgrade_key(info.id, key)  # already done
    assert registry.check_key(info.id, key)
    registry.revoke(info.id)
    assert not registry.check_key(info.id, key)


async def test_a_slow_old_key_check_holds_up_no_one_elses_database_work(tmp_path: Path) -> None:
    async with mosquitto() as broker, running_farm(tmp_path, broker, webapp=False) as farm:
        db = farm.coordinator.runner.db
        info, key = await farm.coordinator.runner.call(ApiKeyStore(db).create, "slow")

        def make_slow() -> None:
            slow = scrypt_hash(key, p=16)
            ApiKey.update(key_hash=slow).where(ApiKey.id == info.id).execute()

        await farm.coordinator.runner.call(make_slow)
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

            started = time.monotonic()
            checking = asyncio.create_task(
                call("key check", "POST", "/keys/check", {"api_key": key})
            )
            await asyncio.sleep(0.05)  # the check has started
            # /models reads the fleet on the database thread.
            assert await call("models", "GET", "/models") == 200
            assert await checking == 200
            assert finished == ["models", "key check"], time.monotonic() - started
            # upgraded: the next check is fast, and answers the same
            assert await call("again", "POST", "/keys/check", {"api_key": key}) == 200
        assert await farm.coordinator.runner.call(
            lambda: ApiKey.get_by_id(info.id).key_hash == hash_key(key)
        )
