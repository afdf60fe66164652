"""A key row from before the fast hash (scrypt, tens of milliseconds) is checked off the
coordinator's database thread: its slow check holds up nobody else's database work, and
afterwards the row holds the fast hash."""

import asyncio
import time
from pathlib import Path

import httpx

from coordinator.db.tables import ApiKey
from coordinator.keys.api_keys import ApiKeyStore
from coordinator.keys.hashing import hash_key
from tests.support.brokers import mosquitto
from tests.support.farm import running_farm
from tests.support.keys import scrypt_hash


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
