"""Keeping the broker's accounts in step with the database, for the coordinator's admin
paths (API and CLI) and its periodic reconcile. With no dynsec admin configured, every
operation is a logged no-op: the broker's accounts are someone else's business."""

import asyncio
import logging

from coordinator.db.runner import DbRunner
from coordinator.keys.hashing import hash_key
from coordinator.mqtt.accounts import BrokerAccounts, BrokerAdminError, Dynsec
from coordinator.settings import CoordinatorSettings
from coordinator.workers.registry import WorkerRegistry
from farm_protocol import acl

log = logging.getLogger(__name__)


class Provisioner:
    def __init__(self, settings: CoordinatorSettings) -> None:
        admin = settings.broker_admin()
        self.accounts = BrokerAccounts(Dynsec(admin)) if admin is not None else None
        self.interval_s = settings.reconcile_interval_s
        own = settings.broker
        self.own_password = (
            own.password.get_secret_value()
            if own.username == acl.COORDINATOR and own.password is not None
            else None
        )

    @property
    def managed(self) -> bool:
        return self.accounts is not None

    async def worker_added(self, worker_id: str, key: str) -> str:
        if self.accounts is None:
            return "not managed"
        await self.accounts.add_worker(worker_id, key)
        return "provisioned"

    async def worker_rotated(self, worker_id: str, key: str) -> str:
        if self.accounts is None:
            return "not managed"
        await self.accounts.rotate_worker(worker_id, key)
        return "provisioned"

    async def new_key(
        self, runner: DbRunner, workers: WorkerRegistry, worker_id: str
    ) -> tuple[str, str]:
        """A new key for an active worker: the broker learns it first (which disconnects
        the old key's session), then the database, so a broker that cannot be reached
        leaves the old key working. The key, and what became of the broker account."""
        key, nonce = await runner.call(workers.new_key_for, worker_id)
        broker = await self.worker_rotated(worker_id, key)
        await runner.call(workers.set_key, worker_id, key_hash=hash_key(key), nonce=nonce)
        return key, broker

    async def worker_revoked(self, worker_id: str) -> str:
        if self.accounts is None:
            return "not managed"
        await self.accounts.revoke_worker(worker_id)
        return "provisioned"

    async def reconcile_forever(self, runner: DbRunner, workers: WorkerRegistry) -> None:
        """At start, then every ``interval_s``: the database is the source of truth."""
        if self.accounts is None:
            log.info("broker accounts are not managed (no FARM_BROKER_ADMIN_USERNAME)")
            await asyncio.Event().wait()
            return
        while True:
            try:
                wanted = await runner.call(workers.broker_passwords)
                await self.accounts.reconcile(wanted, self.own_password)
            except BrokerAdminError as exc:
                log.warning("broker reconcile failed (will retry): %s", exc)
            await asyncio.sleep(self.interval_s)
