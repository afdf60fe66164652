"""Deadlines and lost workers, applied on a timer (the authority is the database clock)."""

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from coordinator.db.runner import DbRunner
from coordinator.jobs.deadlines import DeadlineSweep
from coordinator.jobs.records import Deadlines
from coordinator.mqtt.bus import Bus
from coordinator.settings import CoordinatorSettings

log = logging.getLogger(__name__)


def deadlines_from(settings: CoordinatorSettings) -> Deadlines:
    return Deadlines(
        accept_s=settings.accept_timeout_s,
        queue_s=settings.queue_timeout_s,
        first_token_s=settings.first_token_timeout_s,
        stall_s=settings.stall_timeout_s,
        reply_s=settings.reply_timeout_s,
        worker_grace_s=settings.worker_grace_s,
        requeue_lost_streaming=settings.requeue_lost_streaming,
    )


class Janitor:
    def __init__(
        self,
        runner: DbRunner,
        sweeper: DeadlineSweep,
        deadlines: Deadlines,
        bus: Bus,
        forget: Callable[[str], None],
        wake_dispatcher: Callable[[], None],
    ) -> None:
        self.runner = runner
        self.sweeper = sweeper
        self.deadlines = deadlines
        self.bus = bus
        self.forget = forget
        self.wake_dispatcher = wake_dispatcher
        self.started = time.monotonic()

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.sweep()

    async def sweep(self) -> None:
        # after a start, the workers have the grace period to say they are there before
        # their models count as served by no one
        settled = time.monotonic() - self.started >= self.deadlines.worker_grace_s
        result = await self.runner.call(
            functools.partial(self.sweeper.sweep, self.deadlines, unserved=settled)
        )
        for view in result.messages:
            if view.job_id:
                self.forget(view.job_id)
            log.info("message %s -> %s (%s)", view.message_id, view.state, view.error)
            await self.bus.message(view)
        for c in result.cancels:
            await self.bus.cancel(c.worker_id, c.job_id, c.attempt, c.reason)
        if result.messages:
            self.wake_dispatcher()
