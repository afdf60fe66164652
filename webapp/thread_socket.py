"""One browser watching one thread over a websocket: the snapshot, then live events,
with no gap and no duplicate."""

import asyncio

from aiomqtt import MqttError
from quart import Websocket

from farm_protocol.browser import (
    NO_THREAD_CLOSE_CODE,
    RELOAD_CLOSE_CODE,
    BrowserEvent,
    ChunkEvent,
    MessageChanged,
    SnapshotEvent,
)
from farm_protocol.chat import MessageView, ThreadSnapshot
from farm_runtime.chunks import ChunkSequence
from webapp.bridge import RESYNC, Bridge, Subscriber
from webapp.coordinator_client import CoordinatorClient, CoordinatorUnavailable

BRIDGE_WAIT_S = 5.0  # how long a new websocket waits for the bridge's MQTT subscription
MAX_BATCH = 256  # events sent in one websocket message at most


class ThreadSocket:
    """One browser watching one thread: the snapshot, then live events, with no gap and
    no duplicate (chunks are filtered by sequence number per job attempt)."""

    def __init__(
        self,
        bridge: Bridge,
        coordinator: CoordinatorClient,
        thread_id: str,
        session: str,
        websocket: Websocket,
    ) -> None:
        self.websocket = websocket  # the request's own, not Quart's proxy looked up per send
        self.bridge = bridge
        self.coordinator = coordinator
        self.thread_id = thread_id
        self.session = session
        # job id -> (its attempt, the chunks of that attempt this browser has)
        self.sent: dict[str, tuple[int, ChunkSequence]] = {}
        self.out: list[BrowserEvent] = []  # to send with the next write

    async def serve(self) -> None:
        try:
            await asyncio.wait_for(self.bridge.ready.wait(), timeout=BRIDGE_WAIT_S)
        except TimeoutError:
            await self.websocket.close(1013, "live updates are unavailable; retrying")
            return
        try:  # subscribed before the snapshot is taken: nothing is missed
            sub = await self.bridge.subscribe(self.thread_id)
        except MqttError:
            await self.websocket.close(1013, "live updates are unavailable; retrying")
            return
        try:
            snapshot = await self._snapshot()
            if snapshot is None:
                await self.websocket.close(NO_THREAD_CLOSE_CODE, "no such thread")
                return
            await self.websocket.send(SnapshotEvent(**dict(snapshot)).wire)
            for message in snapshot.messages:
                self._catch_up(message)
            await self._flush()
            await self._live(sub)
        finally:
            self.bridge.unsubscribe(sub)

    async def _snapshot(self) -> ThreadSnapshot | None:
        try:
            return await self.coordinator.snapshot(self.thread_id, self.session)
        except CoordinatorUnavailable:
            await self.websocket.close(1013, "the chat service is unavailable")
            return None

    async def _live(self, sub: Subscriber) -> None:
        """Live events as they come; what queued up meanwhile goes out in one message."""
        while True:
            batch = [await sub.next()]
            batch += sub.take_waiting(MAX_BATCH - 1)
            for event in batch:
                if event is RESYNC:
                    await self._flush()
                    await self.websocket.close(RELOAD_CLOSE_CODE, "fell behind")
                    return
                if isinstance(event, ChunkEvent):
                    self._chunk(event)
                else:
                    self.out.append(event)
                    if isinstance(event, MessageChanged):
                        self._catch_up(event.message)
            await self._flush()

    def _catch_up(self, message: MessageView) -> None:
        """Queue the bridge's buffered chunks this browser has not seen for ``message``."""
        if not message.job_id or message.state.final:
            return
        self.bridge.watch_job(message.job_id, self.thread_id)
        if message.worker_id and message.attempt:
            self.bridge.learn_holder(message.job_id, message.worker_id, message.attempt)
        attempt = self.bridge.attempt_of(message.job_id)
        known = self.sent.get(message.job_id)
        if known is None or known[0] != attempt:
            known = self.sent[message.job_id] = (attempt, ChunkSequence())
        sent = known[1]
        if message.content_seq >= 0:
            sent.raise_floor(message.content_seq)  # those are in the message's text
        for event in self.bridge.chunks_after(message.job_id, attempt, sent.floor):
            self._chunk(event)

    def _chunk(self, event: ChunkEvent) -> None:
        known = self.sent.get(event.job_id)
        if known is None or event.attempt > known[0]:
            known = self.sent[event.job_id] = (event.attempt, ChunkSequence())
        if event.attempt < known[0] or known[1].add(event.seq) is None:
            return  # an earlier attempt's, or sent already
        self.out.append(event)

    async def _flush(self) -> None:
        """Send what is queued for this browser: one event as itself, several as a list
        in one websocket message (one write)."""
        if not self.out:
            return
        out, self.out = self.out, []
        if len(out) == 1:
            await self.websocket.send(out[0].wire)
        else:
            await self.websocket.send("[" + ",".join(e.wire for e in out) + "]")
