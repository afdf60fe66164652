"""Deadlines and lost workers, applied on a timer (the authority is the database clock)."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from coordinator.db.runner import DbRunner
from coordinator.jobs.store import Deadlines, JobStore
from coordinator.settings import CoordinatorSettings
from farm_protocol import topics
from farm_protocol.chat import MessageView
from farm_protocol.codec import encode
from farm_protocol.payloads import JobCancel
from farm_runtime.outbox import Outbox

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
        jobs: JobStore,
        deadlines: Deadlines,
        outbox: Outbox,
        publish_message: Callable[[MessageView], Awaitable[None]],
        forget: Callable[[str], None],
        kick: Callable[[], None],
    ) -> None:
        self.runner = runner
        self.jobs = jobs
        self.deadlines = deadlines
        self.outbox = outbox
        self.publish_message = publish_message
        self.forget = forget
        self.kick = kick

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.sweep()

    async def sweep(self) -> None:
        result = await self.runner.call(self.jobs.sweep, self.deadlines)
        for view in result.messages:
            if view.job_id:
                self.forget(view.job_id)
            log.info("message %s -> %s (%s)", view.message_id, view.state, view.error)
            await self.publish_message(view)
        for cancel in result.cancels:
            payload = JobCancel(job_id=cancel.job_id, attempt=cancel.attempt, reason=cancel.reason)
            await self.outbox.put(
                topics.worker_control(cancel.worker_id), encode(payload), qos=topics.QOS_CONTROL
            )
        if result.messages:
            self.kick()
