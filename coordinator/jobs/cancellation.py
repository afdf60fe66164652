"""Stopping a reply: the user's stop button and the admin API's cancel.

The job ends ``cancelled`` with the text generated so far (including what arrived but was
not yet written), the cancel is published to the worker holding it so the generation
stops there too, and its slot goes to the next job.
"""

import logging
from collections.abc import Callable

from coordinator.db.runner import DbRunner
from coordinator.jobs.endings import Endings
from coordinator.jobs.streams import JobStreams
from coordinator.mqtt.bus import Bus
from farm_protocol.chat import MessageView

log = logging.getLogger(__name__)


class Canceller:
    def __init__(
        self,
        runner: DbRunner,
        endings: Endings,
        streams: JobStreams,
        bus: Bus,
        wake_dispatcher: Callable[[], None],
    ) -> None:
        self.runner = runner
        self.endings = endings
        self.streams = streams
        self.bus = bus
        self.wake_dispatcher = wake_dispatcher

    async def cancel(self, job_id: str, reason: str) -> MessageView | None:
        """Cancel ``job_id``; its final message, or None if it had already ended."""
        tail = self.streams.take_tail(job_id)
        view, order = await self.runner.call(self.endings.cancel, job_id, reason, tail)
        if order is not None:
            await self.bus.cancel(order.worker_id, order.job_id, order.attempt, reason)
        if view is not None:
            log.info("job %s cancelled: %s", job_id, reason)
            await self.bus.message(view)
            self.wake_dispatcher()
        return view
