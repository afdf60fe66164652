"""Storing replies from their progress: *accepted*, checkpoints of the text, *done* and
*failed*. A coordinator never sees a reply's live chunks (those are for the people
watching); it stores the text the checkpoints carry and checks *done* against it.

With several coordinators on Mosquitto each one receives a share of every job's progress
(a shared subscription, round-robin per message), so consecutive checkpoints of one job
are written by different coordinators, in any order. Nothing here depends on having
seen the message before: every write is fenced by the job's attempt and worker and
continues the stored text exactly where it ends (checkpoints overlap, so one that lands
late is covered by the next). Text that would leave a gap waits here and is tried again
at the next flush (the text before it is usually being written by another coordinator at
that moment); still missing after ``gap_s``, it is asked of the worker again."""

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from coordinator.db.runner import DbRunner
from coordinator.jobs.endings import Endings
from coordinator.jobs.records import ActiveJob, Expected, TextAppend
from coordinator.jobs.stream_writes import StreamWrites
from coordinator.mqtt.bus import Bus
from farm_protocol.chat import MessageState, MessageView
from farm_protocol.payloads import (
    JobAccepted,
    JobCheckpoint,
    JobDone,
    JobFailed,
    JobProgress,
    JobReplay,
)
from farm_runtime.logs import DropLog

log = logging.getLogger(__name__)

_MAX_WAITING = 64  # appends one job may keep waiting for a gap to fill


def usage_of(done: JobDone) -> tuple[int | None, int | None, str | None, str | None]:
    """What a *done* says the model did, as the reply keeps it: its token counts, why it
    ended (OpenAI's words: "tool_calls" when it called tools), and the calls (JSON)."""
    reason = done.done_reason
    calls = None
    if done.tool_calls:
        reason = "tool_calls"
        calls = json.dumps([c.model_dump() for c in done.tool_calls])
    elif reason not in (None, "stop", "length"):
        reason = "stop"  # Ollama's "load" or "unload" end no reply of ours
    return done.prompt_eval_count, done.eval_count, reason, calls


def text_append(
    job: ActiveJob, texts: JobCheckpoint | JobDone | JobFailed, stored_guess: int | None = None
) -> TextAppend | None:
    """The chunks a checkpoint (or a final event's tail) carries, as one append;
    ``stored_guess``: where the stored text most likely ends (see TextAppend)."""
    if not texts.texts:
        return None
    starts, at = [], 0
    for piece in texts.texts:
        starts.append(at)
        at += len(piece)
    return TextAppend(
        job.job_id,
        job.attempt,
        job.worker_id,
        job.message_id,
        "".join(texts.texts),
        last_seq=texts.last_seq,
        chunks=texts.last_seq + 1,
        starts=tuple(starts),
        stored_guess=stored_guess,
    )


@dataclass(slots=True)
class Held:
    """A job this process has heard of, held by ``job.worker_id``: what waits to be
    written (checkpoints, a *done* whose text is not all stored), and since when."""

    job: ActiveJob
    waiting: list[TextAppend] = field(default_factory=list)
    # the last chunk of the last text heard (or stored, when first looked up): where the
    # next checkpoint, which overlaps it, most likely continues the stored text
    heard_seq: int = -1
    done: JobDone | None = None
    gap_since: float | None = None  # since when the stored text has had a gap
    gap_after: int = -1  # the last chunk stored before it
    replay_after: float = 0.0  # no new replay request before this
    heard_at: float = field(default_factory=time.monotonic)


class JobStreams:
    """The progress of every job this process receives (see the module's doc).

    A job it has heard nothing of for ``idle_s``, with nothing waiting, is forgotten: its
    job ended where this process did not see it end. Running jobs whose stored progress
    has been quiet for ``quiet_s`` are asked to replay, from the first chunk not stored:
    the coordinator that received their last progress may have died with it."""

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
        quiet_s: float = 5.0,
    ) -> None:
        self.runner = runner
        self.writes = writes
        self.endings = endings
        self.bus = bus
        self.wake_dispatcher = wake_dispatcher
        self.flush_interval_s = flush_interval_s
        self.gap_s = gap_s
        self.idle_s = idle_s
        self.quiet_s = quiet_s
        self._held: dict[str, Held] = {}
        self._strays: set[tuple[str, int, str]] = set()
        self._asked: dict[str, float] = {}  # job -> when a quiet replay was last asked
        self._next_quiet_check = 0.0
        self._ignored = DropLog(log, level=logging.INFO)
        self.on_first_token: Callable[[float], None] = lambda seconds: None
        self.on_succeeded: Callable[[MessageView], None] = lambda view: None

    async def on_event(self, worker_id: str, thread_id: str, event: JobProgress) -> None:
        """``event`` from ``worker_id``, on its topic for ``thread_id``."""
        stray = (event.job_id, event.attempt, worker_id)
        if stray in self._strays:  # known not to be held: no database look-up again
            return
        held = await self._lookup(worker_id, event.job_id, event.attempt)
        if held is not None and held.job.thread_id != thread_id:
            held = None  # a topic naming another thread: spoofed or confused
        if held is None:
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
        held.heard_at = time.monotonic()
        match event:
            case JobAccepted():
                await self.runner.call(self.writes.accept, event.job_id, event.attempt, worker_id)
            case JobCheckpoint():
                append = self._heard(held, event)
                if append is not None and len(held.waiting) < _MAX_WAITING:
                    held.waiting.append(append)
            case JobDone():
                held.done = event
                await self._try_finish(held)
            case JobFailed():
                await self._fail(held, event)

    @staticmethod
    def _heard(held: Held, texts: JobCheckpoint | JobDone | JobFailed) -> TextAppend | None:
        append = text_append(held.job, texts, held.heard_seq)
        if append is not None:
            held.heard_seq = max(held.heard_seq, append.last_seq)
        return append

    async def _lookup(self, worker_id: str, job_id: str, attempt: int) -> Held | None:
        held = self._held.get(job_id)
        if held is None or held.job.attempt < attempt:
            job = await self.runner.call(self.writes.active_job, job_id)
            if job is None:
                return None
            # only a newer attempt replaces what is held: a message naming one the
            # database does not know (spoofed, or confused) must not drop what waits
            if held is None or job.attempt > held.job.attempt:
                held = self._held[job_id] = Held(job, heard_seq=job.content_seq)
        if held.job.worker_id != worker_id or held.job.attempt != attempt:
            return None
        return held

    async def _try_finish(self, held: Held) -> None:
        done = held.done
        if done is None:
            return
        tail = [*held.waiting]
        last = self._heard(held, done)
        if last is not None:
            tail.append(last)
        expected = Expected(done.chunks, done.chars, done.sha256, usage_of(done))
        finished = await self.runner.call(self.endings.finish_checked, held.job, expected, tail)
        if finished.started:  # a short reply: its first text came with its done
            self.on_first_token(time.time() - held.job.created_at)
        if finished.missing_after is not None:
            self._note_gap(held, finished.missing_after, time.monotonic())
            return  # tried again at each flush until the text before it is stored
        await self._ended(held.job.job_id, finished.view)

    async def _fail(self, held: Held, event: JobFailed) -> None:
        job = held.job
        tail = [*held.waiting]
        last = self._heard(held, event)
        if last is not None:
            tail.append(last)
        view = await self.runner.call(
            self.endings.fail_or_retry,
            job.job_id,
            job.attempt,
            job.worker_id,
            event.reason,
            retryable=event.retryable,
            tail=tail,
        )
        await self._ended(job.job_id, view)

    async def _ended(self, job_id: str, view: MessageView | None) -> None:
        self._held.pop(job_id, None)
        self._asked.pop(job_id, None)
        if view is not None:
            log.info("job %s ended: message %s is %s", job_id, view.message_id, view.state)
            if view.state is MessageState.DONE:
                self.on_succeeded(view)
            await self.bus.message(view)
        self.wake_dispatcher()

    async def run_flusher(self) -> None:
        """Write checkpoints every ``flush_interval_s``: one transaction for all jobs."""
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self.flush()

    async def flush(self) -> None:
        now = time.monotonic()
        batch: list[TextAppend] = []
        for held in self._held.values():
            if held.done is None:  # a done's own attempt writes what waits before it
                batch += held.waiting
                held.waiting = []
        if batch:
            await self._write(batch, now)
        for held in [h for h in self._held.values() if h.done is not None]:
            await self._try_finish(held)
        await self._chase_gaps(now)
        await self._chase_quiet(now)

    async def _write(self, batch: list[TextAppend], now: float) -> None:
        written = await self.runner.call(self.writes.write_texts, batch)
        for view in written.started:
            started = self._held.get(view.job_id or "")
            if started is not None:
                self.on_first_token(time.time() - started.job.created_at)
            await self.bus.message(view)
        for view in written.stopped:
            self._held.pop(view.job_id or "", None)  # nothing more is expected of it
            await self.bus.message(view)  # a stopped reply, with its last text
        for item in batch:
            held = self._held.get(item.job_id)
            if held is not None and item.job_id in written.gaps:
                held.waiting.append(item)  # tried again at the next flush
        for job_id in {item.job_id for item in batch}:
            held = self._held.get(job_id)
            if held is None:
                continue
            if job_id in written.gaps:
                self._note_gap(held, written.gaps[job_id], now)
            else:
                held.gap_since = None

    def _note_gap(self, held: Held, stored_seq: int, now: float) -> None:
        if held.gap_since is None or stored_seq != held.gap_after:
            held.gap_since, held.gap_after = now, stored_seq

    async def _chase_gaps(self, now: float) -> None:
        for job_id, held in list(self._held.items()):
            if held.gap_since is None:
                if not held.waiting and now - held.heard_at > self.idle_s:
                    del self._held[job_id]  # see the class's docstring
                continue
            if now - held.gap_since < self.gap_s or now < held.replay_after:
                continue
            held.replay_after = now + self.gap_s
            job = held.job
            await self._replay(
                job.worker_id, job.thread_id, job_id, job.attempt, held.gap_after + 1
            )

    async def _chase_quiet(self, now: float) -> None:
        """Ask for the progress of running jobs quiet for ``quiet_s`` (see the class)."""
        if now < self._next_quiet_check:
            return
        self._next_quiet_check = now + self.quiet_s / 2
        quiet = await self.runner.call(self.writes.quiet_jobs, time.time() - self.quiet_s)
        for job_id, thread_id, attempt, worker_id, stored_seq in quiet:
            if now - self._asked.get(job_id, -self.quiet_s) < self.quiet_s:
                continue
            self._asked[job_id] = now
            await self._replay(worker_id, thread_id, job_id, attempt, stored_seq + 1)
        if len(self._asked) > 10_000:
            self._asked = {j: t for j, t in self._asked.items() if now - t < self.quiet_s}

    async def _replay(
        self, worker_id: str, thread_id: str, job_id: str, attempt: int, from_seq: int
    ) -> None:
        log.info("job %s: asking worker %s to replay from chunk %d", job_id, worker_id, from_seq)
        replay = JobReplay(job_id=job_id, thread_id=thread_id, attempt=attempt, from_seq=from_seq)
        await self.bus.control(worker_id, replay)

    async def resume(self) -> None:
        """After a start: ask every worker holding a running job to replay it from the
        first chunk not in the database (what a killed predecessor received but never
        wrote is otherwise lost: the broker counts it as delivered)."""
        for job in await self.runner.call(self.writes.running_jobs):
            await self._replay(
                job.worker_id, job.thread_id, job.job_id, job.attempt, job.content_seq + 1
            )

    def following(self) -> list[str]:
        """The jobs this process holds progress of."""
        return list(self._held)

    def take_tail(self, job_id: str) -> list[TextAppend]:
        """The text received for a job but not yet written; the job is forgotten."""
        held = self._held.pop(job_id, None)
        return held.waiting if held is not None else []

    def forget(self, job_id: str) -> None:
        """Drop what is held of a job (it ended by a deadline or a cancel)."""
        self._held.pop(job_id, None)
