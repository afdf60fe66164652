"""Whether this coordinator can serve, for its ``/healthz``: its database answers, and
it is connected to the broker (without it, nothing it queues reaches a worker). A load
balancer, and every webapp, send requests only to coordinators that say they can."""

import asyncio
import logging
from dataclasses import dataclass, field

from coordinator.db import sql
from coordinator.db.runner import DbRunner
from coordinator.errors import StoreError

log = logging.getLogger(__name__)

DATABASE_TIMEOUT_S = 2.0


def _ping(runner: DbRunner) -> None:
    sql.execute(runner.db, "SELECT 1").fetchone()


@dataclass(slots=True)
class Readiness:
    runner: DbRunner
    broker: asyncio.Event = field(default_factory=asyncio.Event)  # set while connected

    async def problems(self) -> list[str]:
        """What keeps this coordinator from serving; empty when it can."""
        found = []
        try:
            async with asyncio.timeout(DATABASE_TIMEOUT_S):
                await self.runner.call(_ping, self.runner)
        except (StoreError, TimeoutError) as exc:
            found.append(f"the database does not answer: {exc or 'timed out'}")
        if not self.broker.is_set():
            found.append("not connected to the broker")
        return found
