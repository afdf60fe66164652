"""Everything the coordinator receives from the broker, validated once, then routed."""

import asyncio
import logging
from collections.abc import Callable

import aiomqtt

from coordinator.db.runner import DbRunner
from coordinator.jobs.stream_writes import StreamWrites
from coordinator.jobs.streams import JobStreams
from coordinator.mqtt.bus import Bus
from coordinator.workers.presence import WorkerPresence
from farm_protocol import acl, topics
from farm_protocol.codec import JOB_PROGRESS, adapter_for, decode
from farm_protocol.errors import ProtocolError
from farm_protocol.payloads import MAX_WORKER_MESSAGE_BYTES, Heartbeat, WorkerStatus
from farm_runtime.broker import Subscription
from farm_runtime.logs import DropLog

log = logging.getLogger(__name__)

# Every coordinator receives every worker's status (retained: a new one learns the fleet
# at once). Heartbeats and job progress are spread over the coordinators by a shared
# subscription where the broker has them (Mosquitto); on a broker that refuses it (the
# embedded amqtt), the plain filter, for the one coordinator that runs there.
SUBSCRIPTIONS = [
    Subscription(topics.ALL_STATUS, topics.QOS_STATUS),
    Subscription(
        topics.shared(acl.COORDINATOR_GROUP, topics.ALL_HEARTBEATS),
        topics.QOS_HEARTBEAT,
        fallback=topics.ALL_HEARTBEATS,
    ),
    Subscription(
        topics.shared(acl.COORDINATOR_GROUP, topics.ALL_JOB_PROGRESS),
        topics.QOS_JOB_EVENTS,
        fallback=topics.ALL_JOB_PROGRESS,
    ),
]

_STATUS = adapter_for(WorkerStatus)
_HEARTBEAT = adapter_for(Heartbeat)


HEARTBEAT_BATCH_S = 0.5  # small against the grace period (FARM_WORKER_GRACE_S, 10 s)


class Inbound:
    """Messages from workers, in one lane per worker: a worker's messages are handled in
    the order they came (its job events, status and heartbeats), different workers' side
    by side. Handled one at a time for the whole farm, every message waited for the
    database thread in turn while the others queued behind it, and the thread sat idle
    in between: the farm's throughput was capped by that round trip, not by the work."""

    LANE_SIZE = 10_000  # a lane this full makes the broker connection wait (backpressure)
    LANE_BYTES = 4 * 1024 * 1024  # a lane holding this much drops what else comes
    MAX_LANES = 100_000  # beyond this (many made-up worker ids), messages are handled inline

    def __init__(
        self,
        runner: DbRunner,
        workers: WorkerPresence,
        writes: StreamWrites,
        streams: JobStreams,
        bus: Bus,
        fleet_changed: Callable[[], None],
    ) -> None:
        self.runner = runner
        self.workers = workers
        self.writes = writes
        self.streams = streams
        self.bus = bus
        self.fleet_changed = fleet_changed
        self._lanes: dict[str, asyncio.Queue[aiomqtt.Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._beats: dict[str, Heartbeat] = {}  # the newest of each worker, not yet written
        self._lane_bytes: dict[str, int] = {}  # payload bytes waiting in each lane
        self._dropped = DropLog(log)

    async def record_heartbeats(self, interval_s: float = HEARTBEAT_BATCH_S) -> None:
        """Write idle workers' heartbeats, all in one transaction, every ``interval_s`` (one
        write per heartbeat cost a quarter of a core with 1,000 idle workers)."""
        while True:
            await asyncio.sleep(interval_s)
            await self.flush_heartbeats()

    async def flush_heartbeats(self) -> None:
        beats, self._beats = list(self._beats.values()), {}
        if not beats:
            return
        await self.runner.call(self.workers.record_heartbeats, beats)

    async def handle(self, message: aiomqtt.Message) -> None:
        """Queue ``message`` on its worker's lane (handled in order, soon)."""
        try:
            worker_id = topics.parse_worker_topic(message.topic.value).worker_id
        except ProtocolError:
            await self.process(message)  # logs and drops it
            return
        lane = self._lanes.get(worker_id)
        if lane is None:
            if len(self._lanes) >= self.MAX_LANES:
                await self.process(message)
                return
            lane = self._lanes[worker_id] = asyncio.Queue(self.LANE_SIZE)
            task = asyncio.create_task(self._drain(worker_id, lane), name=f"inbound-{worker_id}")
            self._tasks.add(task)
        size = _size(message.payload)
        waiting = self._lane_bytes.get(worker_id, 0)
        if waiting + size > self.LANE_BYTES:
            # far more than a worker sends when it behaves: drop, do not grow (a chunk lost
            # from a real stream is asked for again, see JobStreams)
            self._dropped.warn(
                worker_id, "dropped a message from %s: %d bytes already wait", worker_id, waiting
            )
            return
        self._lane_bytes[worker_id] = waiting + size
        await lane.put(message)

    async def _drain(self, worker_id: str, lane: asyncio.Queue[aiomqtt.Message]) -> None:
        while True:
            message = await lane.get()
            self._lane_bytes[worker_id] -= _size(message.payload)
            try:
                await self.process(message)
            except Exception:
                log.exception("dropped a message on %s", message.topic.value)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def process(self, message: aiomqtt.Message) -> None:
        """Handle one message now: validate it, then act on it."""
        topic = message.topic.value
        try:
            where = topics.parse_worker_topic(topic)
            if where.leaf == "progress":
                event = decode(JOB_PROGRESS, message.payload, MAX_WORKER_MESSAGE_BYTES)
                if event.job_id != where.job_id or where.thread_id is None:
                    raise ProtocolError(f"payload job {event.job_id} != topic job {where.job_id}")
                await self.streams.on_event(where.worker_id, where.thread_id, event)
            elif where.leaf == "status":
                if not message.payload:
                    return  # a retained status cleared (clear_status): nothing to learn
                status = decode(_STATUS, message.payload, MAX_WORKER_MESSAGE_BYTES)
                await self._status(where.worker_id, status, retained=bool(message.retain))
            elif where.leaf == "heartbeat":
                beat = decode(_HEARTBEAT, message.payload, MAX_WORKER_MESSAGE_BYTES)
                self._same_worker(where.worker_id, beat.worker_id)
                if beat.running:  # at once: it may name jobs to stop (see _stop_orphans)
                    current = await self.runner.call(self.workers.record_heartbeat, beat)
                    # from any session of a registered worker's: a new one announces its
                    # jobs before its status makes it the current one
                    if current or await self.runner.call(self.workers.registered, beat.worker_id):
                        await self._stop_orphans(beat)
                else:  # an idle worker's: written with the others, in a batch
                    self._beats[beat.worker_id] = beat
            else:
                raise ProtocolError(f"the coordinator does not take {where.leaf} messages")
        except ProtocolError as exc:
            self._dropped.message(topics.subject(topic), topic, exc, message.payload)

    async def _status(self, worker_id: str, status: WorkerStatus, *, retained: bool) -> None:
        self._same_worker(worker_id, status.worker_id)
        if await self.runner.call(self.workers.record_status, status):
            log.info(
                "worker %s is %s (session %s, models %s, capacity %d)",
                worker_id,
                status.state,
                status.session_id,
                status.models,
                status.capacity,
            )
            self.fleet_changed()
        elif retained and not await self.runner.call(self.workers.registered, worker_id):
            # a revoked or deleted worker's last word, kept by the broker for ever: gone
            log.info("cleared the retained status of worker %s (revoked or unknown)", worker_id)
            await self.bus.clear_status(worker_id)
        else:
            log.info(
                "ignored %s status of worker %s (unknown, revoked or stale session)",
                status.state,
                worker_id,
            )

    async def _stop_orphans(self, beat: Heartbeat) -> None:
        """A worker cut off long enough for its jobs to fail or move on still runs them
        when it comes back: tell it to stop, so its slots serve jobs that are its own.
        A job it runs that is still only assigned here had its *accepted* lost (received
        by a coordinator that died): it is accepted now."""
        running = [(job.job_id, job.attempt) for job in beat.running]
        stray = await self.runner.call(self.writes.reconcile_running, beat.worker_id, running)
        for job_id, attempt in stray:
            log.info(
                "worker %s still runs job %s attempt %d: stopping it",
                beat.worker_id,
                job_id,
                attempt,
            )
            await self.bus.cancel(beat.worker_id, job_id, attempt, "this job is no longer yours")

    @staticmethod
    def _same_worker(topic_worker: str, payload_worker: str) -> None:
        if topic_worker != payload_worker:
            raise ProtocolError(f"payload worker {payload_worker} != topic worker {topic_worker}")


def _size(payload: object) -> int:
    return len(payload) if isinstance(payload, bytes | bytearray | str) else 0
