"""The outbox: QoS1 publishes that survive a reconnect, kept in flight side by side."""

import asyncio
import logging
from dataclasses import dataclass, field

import aiomqtt

from farm_protocol.payloads import MAX_PACKET_BYTES
from farm_runtime.client_calls import publish

log = logging.getLogger(__name__)

# paho's own default for a client's unacknowledged QoS1 publishes: more in flight would
# only wait in paho's queue instead of ours.
WINDOW = 20


@dataclass(frozen=True, slots=True, order=True)
class Outgoing:
    number: int  # order of arrival: a resend keeps its place ahead of later items
    topic: str = field(compare=False)
    payload: bytes = field(compare=False)
    qos: int = field(compare=False)
    retain: bool = field(compare=False)


class Outbox:
    """Publishes that survive a reconnect: queued while the broker is away, sent in order
    once it is back. An item whose PUBACK never came is sent again (QoS1 is at least once;
    receivers de-duplicate by sequence number).

    Up to ``window`` publishes are in flight at once: each is handed to the client in
    order, and the next goes out without waiting for the previous one's PUBACK (one at a
    time, every message waited a round trip through the broker and the event loop behind
    the one before it). A publish that fails is sent again, ahead of everything not yet
    sent, after a pause; when the session ends, whatever is still unacknowledged is sent
    first on the next one."""

    def __init__(self, maxsize: int = 100_000, window: int = WINDOW) -> None:
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue(maxsize)
        self._window = window
        self._numbered = 0
        self._resend: list[Outgoing] = []  # taken from the queue, not yet acknowledged
        self._in_flight: dict[asyncio.Task[None], Outgoing] = {}

    async def put(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        if len(payload) > MAX_PACKET_BYTES:
            # the broker would disconnect us for it, and we would send it again on the
            # next connection, for ever: it is dropped here, loudly
            log.error("not publishing %d bytes to %s: over the broker's limit", len(payload), topic)
            return
        self._numbered += 1
        await self._queue.put(Outgoing(self._numbered, topic, payload, qos, retain))

    def pending(self) -> int:
        """Items not yet acknowledged by the broker: queued, in flight or to send again."""
        return self._queue.qsize() + len(self._resend) + len(self._in_flight)

    async def pump(self, client: aiomqtt.Client) -> None:
        """Send queued items through ``client`` until cancelled (run inside a session)."""
        room = asyncio.Semaphore(self._window)
        failed = asyncio.Event()  # a publish failed: pause before sending more

        def settled(task: asyncio.Task[None]) -> None:
            item = self._in_flight.pop(task, None)
            if item is None:
                return  # given up on when the session ended; already queued to resend
            room.release()
            if task.cancelled():
                self._again(item)
                return
            exc = task.exception()
            if isinstance(exc, aiomqtt.MqttError):
                log.debug("publish to %s failed (%s); will retry", item.topic, exc)
                self._again(item)
                failed.set()
                return
            if exc is not None:  # not the broker's doing: sending it again cannot help
                log.error("dropped a publish to %s", item.topic, exc_info=exc)
            self._queue.task_done()

        try:
            while True:
                await room.acquire()
                if failed.is_set():
                    await asyncio.sleep(0.5)
                    failed.clear()
                item = self._resend.pop(0) if self._resend else await self._queue.get()
                task = asyncio.create_task(
                    publish(client, item.topic, item.payload, qos=item.qos, retain=item.retain),
                    name=f"publish {item.topic}",
                )
                self._in_flight[task] = item
                task.add_done_callback(settled)
        finally:
            # In flight when the session ends: maybe delivered, maybe not; send again.
            for task, item in list(self._in_flight.items()):
                del self._in_flight[task]
                task.cancel()
                self._again(item)

    def _again(self, item: Outgoing) -> None:
        self._resend.append(item)
        self._resend.sort()

    async def drained(self, timeout_s: float) -> bool:
        """Wait until everything queued has been acknowledged (True), or ``timeout_s``
        passes."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            return False
        return True
