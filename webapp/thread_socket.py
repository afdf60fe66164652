"""One browser watching one thread over a websocket: the snapshot, then live events,
with no gap and no duplicate."""

import asyncio

from quart import websocket

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
from farm_runtime.queues import get_within
from webapp.bridge import Bridge, Subscriber
from webapp.coordinator_client import CoordinatorClient, CoordinatorUnavailable

BRIDGE_WAIT_S = 5.0  # how long a new websocket waits for the bridge's MQTT subscription


class ThreadSocket:
    """One browser watching one thread: the snapshot, then live events, with no gap and
    no duplicate (chunks are filtered by sequence number per job attempt)."""

    def __init__(
        self, bridge: Bridge, coordinator: CoordinatorClient, thread_id: str, session: str
    ) -> None:
        self.bridge = bridge
        self.coordinator = coordinator
        self.thread_id = thread_id
        self.session = session
        # job id -> (its attempt, the chunks of that attempt this browser has)
        self.sent: dict[str, tuple[int, ChunkSequence]] = {}

    async def serve(self) -> None:
        try:
            await asyncio.wait_for(self.bridge.ready.wait(), timeout=BRIDGE_WAIT_S)
        except TimeoutError:
            await websocket.close(1013, "live updates are unavailable; retrying")
            return
        sub = self.bridge.subscribe(self.thread_id)  # before the snapshot: nothing is missed
        try:
            snapshot = await self._snapshot()
            if snapshot is None:
                await websocket.close(NO_THREAD_CLOSE_CODE, "no such thread")
                return
            await self._send(SnapshotEvent(**dict(snapshot)))
            for message in snapshot.messages:
                await self._catch_up(message)
            await self._live(sub)
        finally:
            self.bridge.unsubscribe(sub)

    async def _snapshot(self) -> ThreadSnapshot | None:
        try:
            return await self.coordinator.snapshot(self.thread_id, self.session)
        except CoordinatorUnavailable:
            await websocket.close(1013, "the chat service is unavailable")
            return None

    async def _live(self, sub: Subscriber) -> None:
        while True:
            try:
                event = await get_within(sub.queue, 1.0)
            except TimeoutError:
                if sub.lagging:
                    await websocket.close(RELOAD_CLOSE_CODE, "fell behind")
                    return
                continue
            if isinstance(event, ChunkEvent):
                await self._chunk(event)
            else:
                await self._send(event)
                if isinstance(event, MessageChanged):
                    await self._catch_up(event.message)
            if sub.lagging and sub.queue.empty():
                await websocket.close(RELOAD_CLOSE_CODE, "fell behind")
                return

    async def _catch_up(self, message: MessageView) -> None:
        """Send the bridge's buffered chunks this browser has not seen for ``message``."""
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
            await self._chunk(event)

    async def _chunk(self, event: ChunkEvent) -> None:
        known = self.sent.get(event.job_id)
        if known is None or event.attempt > known[0]:
            known = self.sent[event.job_id] = (event.attempt, ChunkSequence())
        if event.attempt < known[0] or known[1].add(event.seq) is None:
            return  # an earlier attempt's, or sent already
        await self._send(event)

    async def _send(self, event: BrowserEvent) -> None:
        await websocket.send(event.model_dump_json())
