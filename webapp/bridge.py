"""From MQTT to browsers: one subscription set per process, fanned out to many websockets
through bounded queues. A slow browser never stalls the others: when its queue is full it
is told to reload (and then gets the text so far and continues live)."""

import asyncio
import logging
import time
from dataclasses import dataclass, field

import aiomqtt

from farm_protocol import topics
from farm_protocol.browser import BrowserEvent, ChunkEvent, MembersChanged, MessageChanged
from farm_protocol.codec import JOB_EVENT, THREAD_EVENT, decode, preview
from farm_protocol.errors import ProtocolError
from farm_protocol.payloads import (
    MAX_WORKER_MESSAGE_BYTES,
    JobChunk,
    JobDone,
    JobFailed,
    MembersEvent,
    MessageEvent,
)
from farm_protocol.version import TOPIC_ROOT
from farm_runtime.chunks import ChunkSequence
from farm_runtime.logs import DropLog

log = logging.getLogger(__name__)

SUBSCRIPTIONS = [
    (topics.ALL_JOB_EVENTS, topics.QOS_JOB_EVENTS),
    (topics.ALL_THREAD_EVENTS, topics.QOS_THREAD_EVENTS),
]
_KEEP_ENDED_S = 120.0
_MAX_CHARS_PER_JOB = 2_000_000

_MAX_UNVERIFIED = 500  # chunks held per job until the coordinator names its worker
_MAX_UNVERIFIED_CHARS = 2_000_000  # and held for all jobs together
_MAX_UNKNOWN_JOBS = 2_000  # jobs the coordinator has not spoken of, held at once
_KEEP_UNKNOWN_S = 60.0  # and for how long


@dataclass(slots=True)
class JobStream:
    """The chunks of a job's current attempt this process has seen.

    Chunks are forwarded only from the worker and attempt the coordinator says hold the
    job (``holder``, from its thread events and snapshots): a worker can publish on its
    own job topics for any job id, so without this check a rogue one could inject text
    into someone else's reply. Chunks that arrive before the holder is known wait in
    ``unverified``."""

    thread_id: str | None = None
    attempt: int = 0
    seen: ChunkSequence = field(default_factory=ChunkSequence)  # of this attempt
    chunks: dict[int, str] = field(default_factory=dict)  # kept for late joiners
    chars: int = 0
    ended_at: float | None = None
    holder: tuple[str, int] | None = None
    unverified: list[tuple[str, JobChunk]] = field(default_factory=list)
    # the coordinator spoke of the job (a message, a holder, a browser watching); until
    # then the stream is a stranger's, kept briefly and only so many
    known: bool = False
    made_at: float = field(default_factory=time.time)


class Subscriber:
    def __init__(self, thread_id: str, size: int) -> None:
        self.thread_id = thread_id
        self.queue: asyncio.Queue[BrowserEvent] = asyncio.Queue(size)
        self.lagging = False

    def resync(self) -> None:
        """Have this browser start again from a fresh snapshot (it is closed with 4000)."""
        self.lagging = True

    def offer(self, event: BrowserEvent) -> None:
        if self.lagging:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lagging = True
            log.info("a browser on thread %s fell behind; asking it to reload", self.thread_id)


class Bridge:
    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self._threads: dict[str, set[Subscriber]] = {}
        self._jobs: dict[str, JobStream] = {}
        self._next_evict = 0.0
        # Set while subscribed. A browser's snapshot is taken only then: chunks published
        # before the subscription would be in neither the snapshot nor the live stream.
        self.ready = asyncio.Event()
        self._sessions = 0
        self._unknown = 0  # streams of jobs the coordinator never spoke of
        self._unverified_chars = 0
        self._dropped = DropLog(log)

    def connected(self) -> None:
        """The MQTT subscriptions are in place."""
        self._sessions += 1
        self.ready.set()
        if self._sessions > 1:
            # Chunks published while we were away never reach us (a fresh session): every
            # browser starts again from a snapshot, which the coordinator has kept whole.
            log.info("bridge reconnected; resyncing %d browsers", self.browsers())
            for subs in self._threads.values():
                for sub in subs:
                    sub.resync()

    def disconnected(self) -> None:
        self.ready.clear()

    def browsers(self) -> int:
        return sum(len(subs) for subs in self._threads.values())

    # --- browsers ------------------------------------------------------------------------

    def subscribe(self, thread_id: str) -> Subscriber:
        sub = Subscriber(thread_id, self.queue_size)
        self._threads.setdefault(thread_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._threads.get(sub.thread_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._threads[sub.thread_id]

    def watch_job(self, job_id: str, thread_id: str) -> None:
        self._known(job_id).thread_id = thread_id

    def chunks_after(self, job_id: str, attempt: int, seq: int) -> list[ChunkEvent]:
        """Chunks of ``attempt`` with a sequence number above ``seq``, in order."""
        stream = self._jobs.get(job_id)
        if stream is None or stream.attempt != attempt:
            return []
        return [
            ChunkEvent(job_id=job_id, attempt=attempt, seq=s, text=stream.chunks[s])
            for s in sorted(stream.chunks)
            if s > seq
        ]

    def learn_holder(self, job_id: str, worker_id: str, attempt: int) -> None:
        """The coordinator says ``worker_id`` holds ``attempt`` of this job."""
        stream = self._known(job_id)
        if stream.holder is not None and stream.holder[1] > attempt:
            return  # news about an earlier attempt
        stream.holder = (worker_id, attempt)
        waiting, stream.unverified = stream.unverified, []
        self._unverified_chars -= sum(len(c.text) for _, c in waiting)
        for sender, chunk in waiting:
            self._on_chunk(sender, chunk)

    def attempt_of(self, job_id: str) -> int:
        stream = self._jobs.get(job_id)
        return stream.attempt if stream else 0

    # --- MQTT ----------------------------------------------------------------------------

    async def handle(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        try:
            if topic.startswith(TOPIC_ROOT + "/threads/"):
                thread_id = topics.parse_thread_topic(topic)
                event = decode(THREAD_EVENT, message.payload)
                if isinstance(event, MembersEvent):
                    _same_thread(event.thread_id, thread_id)
                    self._fan_out(thread_id, MembersChanged(members=event.members))
                else:
                    _same_thread(event.message.thread_id, thread_id)
                    self._on_message(event)
            else:
                where = topics.parse_worker_topic(topic)
                job_event = decode(JOB_EVENT, message.payload, MAX_WORKER_MESSAGE_BYTES)
                if where.leaf != "jobs" or job_event.job_id != where.job_id:
                    raise ProtocolError("payload job differs from topic job")
                if isinstance(job_event, JobChunk):
                    self._on_chunk(where.worker_id, job_event)
                elif isinstance(job_event, JobDone | JobFailed):
                    ending = self._stream(job_event.job_id)
                    if ending is not None:
                        ending.ended_at = time.time()
        except ProtocolError as exc:
            self._dropped.warn(
                topics.subject(topic),
                "dropped message on %s: %s [%s]",
                topic,
                exc,
                preview(message.payload),
            )
        self._evict()

    def _stream(self, job_id: str) -> JobStream | None:
        """The job's stream, made on its first news; None for news of a job nobody has
        said anything about while too many such jobs are held (a flood of made-up ids)."""
        stream = self._jobs.get(job_id)
        if stream is None:
            if self._unknown >= _MAX_UNKNOWN_JOBS:
                return None
            stream = self._jobs[job_id] = JobStream()
            self._unknown += 1
        return stream

    def _known(self, job_id: str) -> JobStream:
        """The job's stream, which the coordinator has spoken of (a message, a holder, a
        browser watching): it is not a stranger's any more."""
        stream = self._jobs.get(job_id)
        if stream is None:
            stream = self._jobs[job_id] = JobStream(known=True)
        elif not stream.known:
            stream.known = True
            self._unknown -= 1
        return stream

    def _on_message(self, event: MessageEvent) -> None:
        view = event.message
        if view.job_id:
            stream = self._known(view.job_id)
            stream.thread_id = view.thread_id
            if view.state.final:
                stream.ended_at = stream.ended_at or time.time()
            if view.worker_id and view.attempt:
                self.learn_holder(view.job_id, view.worker_id, view.attempt)
        self._fan_out(view.thread_id, MessageChanged(message=view))

    def _on_chunk(self, sender: str, chunk: JobChunk) -> None:
        stream = self._stream(chunk.job_id)
        if stream is None:
            return
        if stream.holder is None:
            fits = self._unverified_chars + len(chunk.text) <= _MAX_UNVERIFIED_CHARS
            if len(stream.unverified) < _MAX_UNVERIFIED and fits:
                stream.unverified.append((sender, chunk))
                self._unverified_chars += len(chunk.text)
            return
        if stream.holder != (sender, chunk.attempt):
            if stream.holder[0] != sender:
                self._dropped.warn(
                    sender,
                    "dropped a chunk of job %s from worker %s: it does not hold that job",
                    chunk.job_id,
                    sender,
                )
            return
        if chunk.attempt < stream.attempt:
            return  # a late chunk from an earlier attempt
        if chunk.attempt > stream.attempt:
            stream.attempt, stream.seen, stream.chunks = chunk.attempt, ChunkSequence(), {}
            stream.chars, stream.ended_at = 0, None
        if stream.seen.add(chunk.seq) is None:
            return  # QoS1 redelivery
        if stream.chars + len(chunk.text) <= _MAX_CHARS_PER_JOB:
            stream.chunks[chunk.seq] = chunk.text
            stream.chars += len(chunk.text)
        if stream.thread_id is not None:
            event = ChunkEvent(
                job_id=chunk.job_id, attempt=chunk.attempt, seq=chunk.seq, text=chunk.text
            )
            self._fan_out(stream.thread_id, event)

    def _fan_out(self, thread_id: str, event: BrowserEvent) -> None:
        for sub in self._threads.get(thread_id, ()):
            sub.offer(event)

    def _evict(self) -> None:
        now = time.time()
        if now < self._next_evict:
            return
        self._next_evict = now + 5.0
        cutoff, strange = now - _KEEP_ENDED_S, now - _KEEP_UNKNOWN_S
        stale = [
            job_id
            for job_id, s in self._jobs.items()
            if (s.ended_at is not None and s.ended_at < cutoff)
            or (not s.known and s.made_at < strange)
        ]
        for job_id in stale:
            gone = self._jobs.pop(job_id)
            self._unverified_chars -= sum(len(c.text) for _, c in gone.unverified)
            if not gone.known:
                self._unknown -= 1


def _same_thread(in_payload: str, in_topic: str) -> None:
    if in_payload != in_topic:
        raise ProtocolError("payload thread differs from topic thread")
