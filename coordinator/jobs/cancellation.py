"""Stopping a reply: the user's stop button and the admin API's cancel.

The job ends ``cancelled`` with the text generated so far (including what arrived but was
not yet written), the cancel is published to the worker holding it so the generation
stops there too, and its slot goes to the next job.
"""

import logging
from collections.abc import Awaitable, Callable

from coordinator.db.runner import DbRunner
from coordinator.jobs.store import JobStore
from coordinator.jobs.streams import JobStreams
from farm_protocol import topics
from farm_protocol.chat import MessageView
from farm_protocol.codec import encode
from farm_protocol.payloads import JobCancel
from farm_runtime.outbox import Outbox

log = logging.getLogger(__name__)


class Canceller:
    def __init__(
        self,
        runner: DbRunner,
        jobs: JobStore,
        streams: JobStreams,
        outbox: Outbox,
        publish_message: Callable[[MessageView], Awaitable[None]],
        kick: Callable[[], None],
    ) -> None:
        self.runner = runner
        self.jobs = jobs
        self.streams = streams
        self.outbox = outbox
        self.publish_message = publish_message
        self.kick = kick

    async def cancel(self, job_id: str, reason: str) -> MessageView | None:
        """Cancel ``job_id``; its final message, or None if it had already ended."""
        tail = self.streams.take_tail(job_id)
        view, order = await self.runner.call(self.jobs.cancel, job_id, reason, tail)
        if order is not None:
            payload = JobCancel(job_id=order.job_id, attempt=order.attempt, reason=reason)
            await self.outbox.put(
                topics.worker_control(order.worker_id), encode(payload), qos=topics.QOS_CONTROL
            )
        if view is not None:
            log.info("job %s cancelled: %s", job_id, reason)
            await self.publish_message(view)
            self.kick()
        return view
