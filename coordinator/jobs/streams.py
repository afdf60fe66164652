"""Assembling streamed replies: de-duplicate and re-order chunks by sequence number,
write text in batches, and finish a job only once its whole text is verified."""

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from coordinator.db.runner import DbRunner
from coordinator.jobs.endings import Endings
from coordinator.jobs.records import ActiveJob, TextAppend
from coordinator.jobs.states import JobState
from coordinator.jobs.stream_writes import StreamWrites
from coordinator.mqtt.bus import Bus
from farm_protocol.chat import MessageView
from farm_protocol.payloads import (
    JobAccepted,
    JobChunk,
    JobDone,
    JobEvent,
    JobFailed,
    JobReplay,
)
from farm_runtime.chunks import ChunkSequence
from farm_runtime.logs import DropLog

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Assembly:
    """One job attempt's stream as received so far."""

    job: ActiveJob
    order: ChunkSequence
    chars: int
    digest: "hashlib._Hash"
    unflushed: list[str] = field(default_factory=list)
    done: JobDone | None = None
    gap_since: float | None = None  # since when a chunk has been missing
    replay_after: float = 0.0  # no new replay request before this
    heard_at: float = field(default_factory=time.monotonic)  # its worker's last event

    @property
    def next_seq(self) -> int:
        return self.order.next_seq

    def missing(self) -> bool:
        """A chunk is missing: later ones (or the final *done*) came before it."""
        expected = self.done.chunks if self.done is not None else None
        return self.order.gap(expected) is not None

    @classmethod
    def resume(cls, job: ActiveJob) -> "Assembly":
        """Continue from what the database holds (after a restart, the text so far)."""
        digest = hashlib.sha256(job.content.encode())
        return cls(job, ChunkSequence(floor=job.content_seq), len(job.content), digest)

    def add(self, chunk: JobChunk) -> bool:
        """Take a chunk; False if it is a duplicate."""
        released = self.order.add(chunk.seq, chunk.text)
        if released is None:
            return False
        for text in released:
            self.unflushed.append(text)
            self.digest.update(text.encode())
            self.chars += len(text)
        return True

    def take(self) -> TextAppend | None:
        """The text not yet written, as one append (and forget it)."""
        if not self.unflushed:
            return None
        pieces, self.unflushed = self.unflushed, []
        starts, at = [], 0
        for piece in pieces:
            starts.append(at)
            at += len(piece)
        job = self.job
        return TextAppend(
            job.job_id,
            job.attempt,
            job.worker_id,
            job.message_id,
            "".join(pieces),
            last_seq=self.next_seq - 1,
            chunks=self.next_seq,
            starts=tuple(starts),
        )


class JobStreams:
    """Every running job's stream. A chunk that stays missing for ``gap_s`` (it was
    lost, typically received by a coordinator process killed before it wrote it) is
    asked for again: a replay request to the worker, from the first missing chunk.

    A stream that has heard nothing for ``idle_s``, with all its text written, is let
    go: its job ended where this process did not see it end (stopped or timed out by
    another coordinator sharing the database; this one's own cancels and deadlines
    forget it at once). Should its worker speak again, the stream resumes from the
    database, as after a restart."""

    def __init__(
        self,
        runner: DbRunner,
        writes: StreamWrites,
        endings: Endings,
        bus: Bus,
        wake_dispatcher: Callable[[], None],
        flush_interval_s: float,
        gap_s: float = 1.0,
        idle_s: float = 300.0,
    ) -> None:
        self.runner = runner
        self.writes = writes
        self.endings = endings
        self.bus = bus
        self.wake_dispatcher = wake_dispatcher
        self.flush_interval_s = flush_interval_s
        self.gap_s = gap_s
        self.idle_s = idle_s
        self._live: dict[str, Assembly] = {}
        self._strays: set[tuple[str, int, str]] = set()
        self._ignored = DropLog(log, level=logging.INFO)
        self.on_first_token: Callable[[float], None] = lambda seconds: None

    async def on_event(self, worker_id: str, event: JobEvent) -> None:
        stray = (event.job_id, event.attempt, worker_id)
        if stray in self._strays:  # known not to be held: no database look-up again
            return
        assembly = await self._assembly(worker_id, event.job_id, event.attempt)
        if assembly is None:
            if len(self._strays) > 10_000:
                self._strays.clear()
            self._strays.add(stray)
            self._ignored.warn(  # once per stray stream, and per worker every 10 s
                worker_id,
                "ignored %s (and what follows) for job %s attempt %d from %s:"
                " not held by that worker/attempt",
                event.kind,
                event.job_id,
                event.attempt,
                worker_id,
            )
            return
        assembly.heard_at = time.monotonic()
        match event:
            case JobAccepted():
                await self.runner.call(self.writes.accept, event.job_id, event.attempt, worker_id)
            case JobChunk():
                first = assembly.next_seq == 0
                if not assembly.add(event):
                    log.debug("duplicate chunk %d of job %s", event.seq, event.job_id)
                elif first and assembly.next_seq > 0:
                    self.on_first_token(time.time() - assembly.job.created_at)
                await self._try_finish(assembly)
            case JobDone():
                assembly.done = event
                await self._try_finish(assembly)
            case JobFailed():
                await self._fail(assembly, event)

    async def _assembly(self, worker_id: str, job_id: str, attempt: int) -> Assembly | None:
        assembly = self._live.get(job_id)
        if assembly is None or assembly.job.attempt < attempt:
            job = await self.runner.call(self.writes.active_job, job_id)
            if job is None:
                return None
            # only a newer attempt replaces the stream: a message naming one the database
            # does not know (spoofed, or confused) must not drop what was received
            if assembly is None or job.attempt > assembly.job.attempt:
                assembly = self._live[job_id] = Assembly.resume(job)
        held = assembly.job
        if held.worker_id != worker_id or held.attempt != attempt:
            return None
        return assembly

    async def _try_finish(self, assembly: Assembly) -> None:
        done = assembly.done
        if done is None or assembly.next_seq < done.chunks:
            return  # chunks still on their way
        complete = (
            assembly.next_seq == done.chunks
            and assembly.chars == done.chars
            and assembly.digest.hexdigest() == done.sha256
        )
        job = assembly.job
        outcome, error = (
            (JobState.SUCCEEDED, None)
            if complete
            else (JobState.FAILED, "the reply arrived incomplete or corrupted")
        )
        if not complete:
            log.warning(
                "job %s: stream check failed (%d/%d chunks, %d/%d chars)",
                job.job_id,
                assembly.next_seq,
                done.chunks,
                assembly.chars,
                done.chars,
            )
        view = await self.runner.call(
            self.endings.finish,
            job.job_id,
            job.attempt,
            job.worker_id,
            outcome,
            error,
            assembly.take(),
        )
        await self._ended(job.job_id, view)

    async def _fail(self, assembly: Assembly, event: JobFailed) -> None:
        job = assembly.job
        view = await self.runner.call(
            self.endings.fail_or_retry,
            job.job_id,
            job.attempt,
            job.worker_id,
            event.reason,
            retryable=event.retryable,
            tail=assembly.take(),
        )
        await self._ended(job.job_id, view)

    async def _ended(self, job_id: str, view: MessageView | None) -> None:
        self._live.pop(job_id, None)
        if view is not None:
            log.info("job %s ended: message %s is %s", job_id, view.message_id, view.state)
            await self.bus.message(view)
        self.wake_dispatcher()

    async def run_flusher(self) -> None:
        """Write streamed text every ``flush_interval_s``: one transaction for all jobs."""
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self.flush()

    async def flush(self) -> None:
        await self._chase_gaps(time.monotonic())
        batch = [a for a in (s.take() for s in self._live.values()) if a is not None]
        if not batch:
            return
        for view in await self.runner.call(self.writes.append_text, batch):
            await self.bus.message(view)

    async def _chase_gaps(self, now: float) -> None:
        for job_id, assembly in list(self._live.items()):
            if not assembly.missing():
                assembly.gap_since = None
                if not assembly.unflushed and now - assembly.heard_at > self.idle_s:
                    del self._live[job_id]  # see the class's docstring
                continue
            if assembly.gap_since is None:
                assembly.gap_since = now
            if now - assembly.gap_since < self.gap_s or now < assembly.replay_after:
                continue
            assembly.replay_after = now + self.gap_s
            job = assembly.job
            log.info(
                "job %s: chunk %d missing for %.1f s; asking worker %s to replay",
                job.job_id,
                assembly.next_seq,
                now - assembly.gap_since,
                job.worker_id,
            )
            await self.bus.control(
                job.worker_id,
                JobReplay(job_id=job.job_id, attempt=job.attempt, from_seq=assembly.next_seq),
            )

    async def resume(self) -> None:
        """After a start: ask every worker holding a running job to replay it from the
        first chunk not in the database (what a killed predecessor received but never
        wrote is otherwise lost: the broker counts it as delivered)."""
        for job in await self.runner.call(self.writes.running_jobs):
            log.info(
                "resuming job %s from chunk %d (worker %s)",
                job.job_id,
                job.content_seq + 1,
                job.worker_id,
            )
            await self.bus.control(
                job.worker_id,
                JobReplay(job_id=job.job_id, attempt=job.attempt, from_seq=job.content_seq + 1),
            )

    def following(self) -> list[str]:
        """The jobs whose streams this process holds."""
        return list(self._live)

    def take_tail(self, job_id: str) -> TextAppend | None:
        """The text received for a job but not yet written; the stream is forgotten."""
        assembly = self._live.pop(job_id, None)
        return assembly.take() if assembly is not None else None

    def forget(self, job_id: str) -> None:
        """Drop a job's stream (it ended by a deadline or a cancel)."""
        self._live.pop(job_id, None)
