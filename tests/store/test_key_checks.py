"""Keys are checked on every request: a wrong or revoked key is refused at once. Rows
from before, stored with scrypt, still verify, and are stored with the fast hash once
their key has checked out. On SQLite and PostgreSQL."""

import peewee as pw

from coordinator.db.runner import DbRunner
from coordinator.db.tables import ApiKey, Worker
from coordinator.keys.api_keys import ApiKeyStore, check_api_key
from coordinator.keys.hashing import hash_key, needs_upgrade
from coordinator.workers.registry import WorkerRegistry
from tests.support.keys import scrypt_hash


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
