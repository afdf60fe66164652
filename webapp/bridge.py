"""From MQTT to browsers: the threads and jobs this process's browsers watch (see
``webapp/interest.py``), fanned out to their websockets through bounded queues. A slow
browser never stalls the others: when its queue is full it is told to reload (and then
gets the text so far and continues live).

A job's text arrives here two ways: live chunks, and the checkpoints its worker sends
the coordinators (see ``farm_protocol/payloads.py``). A browser that starts watching a
job mid-stream gets the stored text in its snapshot, up to the last checkpoint the
coordinator wrote, and live chunks from the moment this process subscribed; the chunks
in between come with the next checkpoint, which overlaps the one before it."""

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import aiomqtt

from farm_protocol import topics
from farm_protocol.browser import (
    BrowserEvent,
    ChunkEvent,
    MembersChanged,
    MessageChanged,
    ThreadChanged,
)
from farm_protocol.codec import JOB_PROGRESS, THREAD_EVENT, adapter_for, decode
from farm_protocol.errors import ProtocolError
from farm_protocol.payloads import (
    MAX_WORKER_MESSAGE_BYTES,
    JobCheckpoint,
    JobChunk,
    JobDone,
    JobFailed,
    MembersEvent,
    MessageEvent,
    ThreadChangedEvent,
)
from farm_protocol.version import TOPIC_ROOT
from farm_runtime.chunks import ChunkSequence
from farm_runtime.logs import DropLog
from farm_runtime.queues import get_within
from webapp.interest import Interest

log = logging.getLogger(__name__)

_CHUNK = adapter_for(JobChunk)
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


RESYNC = None  # in a subscriber's queue: start again from a fresh snapshot
ABANDONED_S = 900.0  # longer than any reply: a subscriber unread this long is dropped


class Subscriber:
    def __init__(self, thread_id: str, size: int) -> None:
        self.thread_id = thread_id
        self.size = size
        # one place more than ``size``, for the RESYNC that ends a lagging browser's queue
        self.queue: asyncio.Queue[BrowserEvent | None] = asyncio.Queue(size + 1)
        self.lagging = False
        self.read_at = time.monotonic()  # when its reader last took an event

    async def next(self, timeout_s: float | None = None) -> BrowserEvent | None:
        """The next event (RESYNC: start again from a snapshot); TimeoutError after
        ``timeout_s``."""
        event = await get_within(self.queue, timeout_s)
        self.read_at = time.monotonic()
        return event

    def take_waiting(self, most: int) -> list[BrowserEvent | None]:
        """Up to ``most`` events that are already waiting, without waiting."""
        taken: list[BrowserEvent | None] = []
        while len(taken) < most and not self.queue.empty():
            taken.append(self.queue.get_nowait())
        return taken

    def abandoned(self, now: float) -> bool:
        """Events wait that nobody has taken for ABANDONED_S: its reader is gone without
        saying so (an API client that hung up before its streamed response began)."""
        return not self.queue.empty() and now - self.read_at > ABANDONED_S

    def resync(self) -> None:
        """Have this browser start again from a fresh snapshot (it is closed with 4000)."""
        if not self.lagging:
            self.lagging = True
            self.queue.put_nowait(RESYNC)

    def offer(self, event: BrowserEvent) -> None:
        if self.lagging:
            return
        if self.queue.qsize() >= self.size:
            log.info("a browser on thread %s fell behind; asking it to reload", self.thread_id)
            self.resync()
            return
        self.queue.put_nowait(event)


class Bridge:
    def __init__(self, queue_size: int, linger_s: float = 10.0) -> None:
        self.queue_size = queue_size
        self.interest = Interest(linger_s)
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
        self.received: Counter[str] = Counter()  # MQTT messages by kind, for /metrics

    def connected(self, client: aiomqtt.Client | None = None) -> None:
        """A broker session started (``client``: None in tests without a broker)."""
        self._sessions += 1
        self.interest.connected(client)
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
        self.interest.disconnected()

    def browsers(self) -> int:
        return sum(len(subs) for subs in self._threads.values())

    # --- browsers ------------------------------------------------------------------------

    async def subscribe(self, thread_id: str) -> Subscriber:
        """A new watcher of ``thread_id``; once this returns, every event of the thread
        and every chunk of its replies published from now on reaches it."""
        sub = Subscriber(thread_id, self.queue_size)
        self._threads.setdefault(thread_id, set()).add(sub)
        try:
            for topic, qos in _thread_topics(thread_id):
                await self.interest.want(topic, qos)
        except BaseException:
            self.unsubscribe(sub)
            raise
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._threads.get(sub.thread_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._threads[sub.thread_id]
                for topic, _ in _thread_topics(sub.thread_id):
                    self.interest.release(topic)

    def watch_job(self, job_id: str, thread_id: str) -> None:
        self._known(job_id).thread_id = thread_id

    async def run_reaper(self, interval_s: float = 2.0) -> None:
        """Drop the subscribers nobody reads any more, and the subscriptions nobody has
        needed for the linger."""
        while True:
            await asyncio.sleep(interval_s)
            self.drop_abandoned()
            await self.interest.reap()
            self._evict()

    def drop_abandoned(self) -> None:
        now = time.monotonic()
        gone = [sub for subs in self._threads.values() for sub in subs if sub.abandoned(now)]
        for sub in gone:
            log.info("dropped a subscriber of thread %s nobody reads", sub.thread_id)
            self.unsubscribe(sub)

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

    def handle(self, message: aiomqtt.Message) -> None:
        """One message from the broker, as it is read (it never waits)."""
        topic = message.topic.value
        try:
            if topic.startswith(TOPIC_ROOT + "/threads/"):
                self.received["thread"] += 1
                thread_id = topics.parse_thread_topic(topic)
                event = decode(THREAD_EVENT, message.payload)
                if isinstance(event, MembersEvent):
                    _same_thread(event.thread_id, thread_id)
                    self._fan_out(thread_id, MembersChanged(members=event.members))
                elif isinstance(event, ThreadChangedEvent):
                    _same_thread(event.thread_id, thread_id)
                    self._fan_out(thread_id, ThreadChanged(thread=event.thread))
                else:
                    _same_thread(event.message.thread_id, thread_id)
                    self._on_message(event)
            else:
                where = topics.parse_worker_topic(topic)
                if where.leaf == "jobs":
                    self.received["chunk"] += 1
                    chunk = decode(_CHUNK, message.payload, MAX_WORKER_MESSAGE_BYTES)
                    if chunk.job_id != where.job_id:
                        raise ProtocolError("payload job differs from topic job")
                    self._on_chunk(where.worker_id, chunk, where.thread_id)
                elif where.leaf == "progress":
                    self.received["progress"] += 1
                    progress = decode(JOB_PROGRESS, message.payload, MAX_WORKER_MESSAGE_BYTES)
                    if progress.job_id != where.job_id:
                        raise ProtocolError("payload job differs from topic job")
                    if isinstance(progress, JobCheckpoint | JobDone | JobFailed):
                        self._on_texts(where.worker_id, progress, where.thread_id)
                else:
                    raise ProtocolError(f"the webapp does not take {where.leaf} messages")
        except ProtocolError as exc:
            self.received["dropped"] += 1
            self._dropped.message(topics.subject(topic), topic, exc, message.payload)
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

    def _on_texts(
        self, sender: str, progress: JobCheckpoint | JobDone | JobFailed, topic_thread: str | None
    ) -> None:
        """A checkpoint's (or a final event's) chunks: those not seen live fill the gap
        a browser that started watching mid-stream would otherwise have."""
        known = self._jobs.get(progress.job_id)
        for offset, text in enumerate(progress.texts):
            seq = progress.from_seq + offset
            if known is not None and known.attempt == progress.attempt and known.seen.has(seq):
                continue  # seen live (most are): nothing to fill
            chunk = JobChunk.model_construct(
                kind="chunk",
                job_id=progress.job_id,
                attempt=progress.attempt,
                seq=seq,
                text=text,
            )
            self._on_chunk(sender, chunk, topic_thread)
        if isinstance(progress, JobDone | JobFailed):
            stream = self._jobs.get(progress.job_id)
            if stream is not None and stream.holder == (sender, progress.attempt):
                stream.ended_at = stream.ended_at or time.time()

    def _on_chunk(self, sender: str, chunk: JobChunk, topic_thread: str | None = None) -> None:
        stream = self._stream(chunk.job_id)
        if stream is None:
            return
        if topic_thread is not None and stream.thread_id not in (None, topic_thread):
            self._dropped.warn(
                sender,
                "dropped a chunk of job %s from worker %s: not on its thread's topic",
                chunk.job_id,
                sender,
            )
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


def _thread_topics(thread_id: str) -> list[tuple[str, int]]:
    """What a webapp subscribes to while someone here watches ``thread_id``, and at which
    QoS. Live chunks at 0: each would cost an acknowledgement, and the chunks a webapp
    misses (the broker drops QoS 0 only when a connection breaks or its queue is full)
    come with the next checkpoint on the progress topic, at 1."""
    return [
        (topics.thread_events(thread_id), topics.QOS_THREAD_EVENTS),
        (topics.thread_chunks(thread_id), topics.QOS_LIVE_CHUNKS),
        (topics.thread_progress(thread_id), topics.QOS_JOB_EVENTS),
    ]


def _same_thread(in_payload: str, in_topic: str) -> None:
    if in_payload != in_topic:
        raise ProtocolError("payload thread differs from topic thread")
