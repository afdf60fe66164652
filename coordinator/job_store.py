"""The job queue. Every state change is one conditional UPDATE whose row count is checked.

    queued -> assigned -> running -> succeeded | failed | timed_out | cancelled
       ^         |           |
       +---------+-----------+  (re-queued only while no token has reached the user)

``attempt`` is the fencing token: a claim increments it, and every later write names the
attempt and worker it belongs to, so a late message from an earlier attempt never lands.
"""

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import peewee as pw

from coordinator.fairness import QueuedJob, fair_order
from coordinator.tables import Job, Message, Worker
from coordinator.views import message_view
from farm_protocol.chat import MessageState, MessageView
from farm_protocol.payloads import ChatTurn, JobAssignment

log = logging.getLogger(__name__)

ACTIVE = ("assigned", "running")

# Hand-written statements for the dispatch hot path (placeholders: %s).
_CLAIM = (
    "UPDATE job SET state = 'assigned', worker_id = %s, attempt = attempt + 1, "
    "assigned_at = %s, accepted_at = NULL, first_token_at = NULL, last_token_at = NULL, "
    "chunks = 0 WHERE id = %s AND state = 'queued'"
)
_CONTEXT = (
    "SELECT kind, role, content, created_at FROM ("
    " SELECT 0 AS kind, role, content, created_at FROM message"
    " WHERE thread_id = %s AND created_at < %s AND role = 'system'"
    " ORDER BY created_at DESC LIMIT 1) AS system_prompt "
    "UNION ALL "
    "SELECT kind, role, content, created_at FROM ("
    " SELECT 1 AS kind, role, content, created_at FROM message"
    " WHERE thread_id = %s AND created_at < %s AND role IN ('user', 'assistant')"
    " AND state = 'done' ORDER BY created_at DESC LIMIT %s) AS history"
)


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


_MESSAGE_STATE = {
    Outcome.SUCCEEDED: MessageState.DONE,
    Outcome.FAILED: MessageState.FAILED,
    Outcome.TIMED_OUT: MessageState.TIMED_OUT,
    Outcome.CANCELLED: MessageState.CANCELLED,
}


@dataclass(frozen=True, slots=True)
class Pick:
    """Dispatch's choice: this job to this worker, which runs ``capacity`` jobs at once."""

    job_id: str
    worker_id: str
    capacity: int


@dataclass(frozen=True, slots=True)
class Health:
    """When a worker that keeps failing is quarantined, and for how long."""

    quarantine_after: int = 3  # failed jobs in a row
    quarantine_s: float = 60.0


@dataclass(frozen=True, slots=True)
class ActiveJob:
    """What the event path needs to know about a job held by a worker."""

    job_id: str
    attempt: int
    worker_id: str
    message_id: str
    thread_id: str
    content: str
    content_seq: int
    created_at: float  # when the request was queued


@dataclass(frozen=True, slots=True)
class TextAppend:
    """Text streamed since the last write, for one job attempt."""

    job_id: str
    attempt: int
    worker_id: str
    message_id: str
    text: str
    last_seq: int  # the highest chunk seq included so far
    chunks: int  # chunks applied so far in this attempt


@dataclass(frozen=True, slots=True)
class Deadlines:
    accept_s: float
    queue_s: float
    first_token_s: float
    stall_s: float
    reply_s: float
    worker_grace_s: float
    # A job whose worker was lost after text reached the user: fail it (the user can retry,
    # as in the original), or start it again elsewhere from an empty text.
    requeue_lost_streaming: bool = False


@dataclass(frozen=True, slots=True)
class Cancel:
    worker_id: str
    job_id: str
    attempt: int
    reason: str


@dataclass(slots=True)
class SweepResult:
    messages: list[MessageView]
    cancels: list[Cancel]
    requeued: int = 0


def _owner() -> pw.Function:
    return pw.fn.COALESCE(Job.api_key_id, Job.user)


def row_tuples(query: "pw.ModelSelect[Any]") -> list[tuple[Any, ...]]:
    """A query's rows as plain tuples (peewee's stubs type them as model instances)."""
    return cast(list[tuple[Any, ...]], list(query.tuples()))


def active_by_owner() -> dict[str, int]:
    """How many jobs each owner (API key, else user) has held by a worker right now."""
    rows = row_tuples(
        Job.select(_owner(), pw.fn.COUNT(Job.id)).where(Job.state.in_(ACTIVE)).group_by(_owner())
    )
    return {str(owner): int(held) for owner, held in rows}


def queued_in_order(limit: int = 1000, *, lock: bool = False) -> list[QueuedJob]:
    """The oldest ``limit`` queued jobs, in serving order (round-robin by owner).

    With ``lock`` (inside a dispatch round's transaction, on PostgreSQL) the rows are
    locked ``FOR UPDATE SKIP LOCKED``: a second coordinator dispatching at the same moment
    skips them and takes the next jobs instead of racing for the same ones."""
    query = (
        Job.select(Job.id, Job.model, Job.created_at, _owner(), Job.avoid_worker_id)
        .where(Job.state == "queued")
        .order_by(Job.created_at, Job.id)
        .limit(limit)
    )
    if lock and not isinstance(Job._meta.database.obj, pw.SqliteDatabase):
        query = query.for_update(skip_locked=True)
    rows = row_tuples(query)
    jobs = [QueuedJob(j, m, c, str(o), a) for j, m, c, o, a in rows]
    return fair_order(jobs, active_by_owner())


def active_counts() -> dict[str, int]:
    """How many jobs each worker holds right now."""
    rows = (
        Job.select(Job.worker_id, pw.fn.COUNT(Job.id).alias("held"))
        .where(Job.state.in_(ACTIVE))
        .group_by(Job.worker_id)
    )
    return {str(row.worker_id): int(getattr(row, "held")) for row in rows}  # noqa: B009 - an alias


class JobStore:
    def __init__(
        self,
        db: pw.Database,
        *,
        context_messages: int,
        max_attempts: int,
        health: Health | None = None,
        api_context_messages: int = 200,
    ) -> None:
        self.db = db
        self.context_messages = context_messages
        # A programmatic client sends its whole conversation: it is kept, up to this.
        self.api_context_messages = api_context_messages
        self.max_attempts = max_attempts
        self.health = health or Health()

    def _write(self) -> pw._atomic:
        """A write transaction; on SQLite take the write lock up front (no upgrade deadlock)."""
        if isinstance(self.db, pw.SqliteDatabase):
            return self.db.atomic("IMMEDIATE")
        return self.db.atomic()

    # --- dispatch -----------------------------------------------------------------------

    def queued_jobs(self, limit: int = 1000, *, lock: bool = False) -> list[QueuedJob]:
        return queued_in_order(limit, lock=lock)

    def transaction(self) -> pw._atomic:
        """One write transaction around a whole dispatch round."""
        return self._write()

    def queued_views(self, positions: dict[str, int]) -> list[MessageView]:
        """The queued replies of these jobs, each with its queue position."""
        rows = Message.select().where(
            Message.job_id.in_(list(positions)) & (Message.state == MessageState.QUEUED.value)
        )
        return [
            message_view(row).model_copy(update={"queue_position": positions[str(row.job_id)]})
            for row in rows
        ]

    def claim(self, job_id: str, worker_id: str, capacity: int) -> JobAssignment | None:
        """Give ``job_id`` to ``worker_id`` if it is still queued and the worker has a free
        slot. Atomic."""
        claimed = self.claim_many([Pick(job_id, worker_id, capacity)])
        return claimed[0][1] if claimed else None

    def claim_many(self, picks: Sequence["Pick"]) -> list[tuple[str, JobAssignment]]:
        """Claim a dispatch round's picks in one transaction. Each claim is a conditional
        UPDATE (the job must still be queued) and respects the worker's free slots as the
        database sees them; on PostgreSQL the workers' rows are locked first, in id order,
        so two coordinators cannot overfill one worker. Picks that lost a race are skipped.
        Returns (worker id, assignment) for each claim that landed."""
        if not picks:
            return []
        workers = sorted({p.worker_id for p in picks})
        with self._write():
            if not isinstance(self.db, pw.SqliteDatabase):
                list(
                    Worker.select(Worker.id)
                    .where(Worker.id.in_(workers))
                    .order_by(Worker.id)
                    .for_update()
                )
            held: dict[str, int] = {
                str(worker): int(count)
                for worker, count in row_tuples(
                    Job.select(Job.worker_id, pw.fn.COUNT(Job.id))
                    .where(Job.worker_id.in_(workers) & Job.state.in_(ACTIVE))
                    .group_by(Job.worker_id)
                )
            }
            stamp = time.time()
            landed: list[Pick] = []
            for pick in picks:
                if held.get(pick.worker_id, 0) >= pick.capacity:
                    continue
                claimed = self._sql(_CLAIM, (pick.worker_id, stamp, pick.job_id)).rowcount
                if claimed == 1:
                    held[pick.worker_id] = held.get(pick.worker_id, 0) + 1
                    landed.append(pick)
            if not landed:
                return []
            rows = {
                job.id: job
                for job in Job.select(
                    Job.id,
                    Job.attempt,
                    Job.model,
                    Job.api_key_id,
                    Message.thread,
                    Message.created_at,
                )
                .join(Message)
                .where(Job.id.in_([p.job_id for p in landed]))
            }
            assigned: list[tuple[str, JobAssignment]] = []
            for pick in landed:
                row = rows[pick.job_id]
                limit = self.api_context_messages if row.api_key_id else self.context_messages
                context = self._context(row.message.thread_id, row.message.created_at, limit)
                if not context:  # nothing to answer (the question was deleted): fail it
                    where = (Job.id == row.id) & (Job.attempt == row.attempt)
                    self._end(where, row.id, Outcome.FAILED, "there is nothing to reply to", stamp)
                    continue
                assignment = JobAssignment(
                    job_id=row.id,
                    attempt=row.attempt,
                    model=row.model,
                    messages=context,
                    issued_at=stamp,
                )
                assigned.append((pick.worker_id, assignment))
            return assigned

    def _context(self, thread_id: str, before: float, limit: int) -> list[ChatTurn]:
        """The thread's latest system prompt before the reply, then the last N messages
        that completed (a failed or empty reply is left out), oldest first. One statement,
        written out once: building it with the query builder per job cost most of a
        dispatch round."""
        rows = self._sql(_CONTEXT, (thread_id, before, thread_id, before, limit))
        turns = sorted(rows.fetchall(), key=lambda r: (r[0], r[3]))
        return [ChatTurn(role=role, content=content) for _, role, content, _ in turns]

    def _sql(self, template: str, params: tuple[Any, ...]) -> Any:
        """Run one of this module's hand-written statements (``%s`` placeholders become
        the driver's own)."""
        param = self.db.param
        return self.db.execute_sql(template.replace("%s", param), params)  # type: ignore[no-untyped-call]

    # --- the event path -----------------------------------------------------------------

    def active_job(self, job_id: str) -> ActiveJob | None:
        row = (
            Job.select(Job, Message)
            .join(Message)
            .where((Job.id == job_id) & Job.state.in_(ACTIVE))
            .first()
        )
        return None if row is None else self._active(row)

    @staticmethod
    def _active(row: Job) -> ActiveJob:
        msg = row.message
        return ActiveJob(
            row.id,
            row.attempt,
            str(row.worker_id),
            msg.id,
            msg.thread_id,
            msg.content,
            msg.content_seq,
            row.created_at,
        )

    def running_jobs(self) -> list[ActiveJob]:
        """Every job a worker has accepted, with the text the database holds."""
        rows = Job.select(Job, Message).join(Message).where(Job.state == "running")
        return [self._active(row) for row in rows]

    @staticmethod
    def _held(job_id: str, attempt: int, worker_id: str) -> pw.Expression:
        return (
            (Job.id == job_id)
            & (Job.attempt == attempt)
            & (Job.worker_id == worker_id)
            & Job.state.in_(ACTIVE)
        )

    def accept(self, job_id: str, attempt: int, worker_id: str) -> bool:
        with self._write():
            changed = (
                Job.update(state="running", accepted_at=time.time())
                .where(self._held(job_id, attempt, worker_id) & (Job.state == "assigned"))
                .execute()
            )
        return bool(changed == 1)

    def append_text(self, appends: Iterable[TextAppend]) -> list[MessageView]:
        """Write a batch of streamed text in one transaction. Returns the messages that
        just started generating (their first text landed)."""
        started: list[MessageView] = []
        with self._write():
            for item in appends:
                if self._apply(item, time.time()):
                    view = message_view(Message.get_by_id(item.message_id))
                    held = {"worker_id": item.worker_id, "attempt": item.attempt}
                    started.append(view.model_copy(update=held))
        return started

    def holder_views(self, assigned: Sequence[tuple[str, JobAssignment]]) -> list[MessageView]:
        """The replies of just-claimed jobs, naming the worker and attempt now holding
        them (published so the webapp knows whose chunks to forward)."""
        holders = {a.job_id: (worker, a.attempt) for worker, a in assigned}
        if not holders:
            return []
        rows = Message.select().where(Message.job_id.in_(list(holders)))
        return [
            message_view(row).model_copy(
                update={
                    "worker_id": holders[str(row.job_id)][0],
                    "attempt": holders[str(row.job_id)][1],
                }
            )
            for row in rows
        ]

    def _apply(self, item: TextAppend, stamp: float) -> bool:
        """Apply one append; True if it was the attempt's first text."""
        fenced = (
            Job.update(
                state="running",
                chunks=item.chunks,
                last_token_at=stamp,
                first_token_at=pw.fn.COALESCE(Job.first_token_at, stamp),
                accepted_at=pw.fn.COALESCE(Job.accepted_at, stamp),
            )
            .where(self._held(item.job_id, item.attempt, item.worker_id))
            .execute()
        )
        if fenced != 1:
            return False
        first = (
            Message.update(state=MessageState.GENERATING.value, updated_at=stamp)
            .where((Message.id == item.message_id) & (Message.state == MessageState.QUEUED.value))
            .execute()
        )
        Message.update(
            content=Message.content.concat(item.text), content_seq=item.last_seq, updated_at=stamp
        ).where((Message.id == item.message_id) & (Message.content_seq < item.last_seq)).execute()
        return bool(first == 1)

    def finish(
        self,
        job_id: str,
        attempt: int,
        worker_id: str,
        outcome: Outcome,
        error: str | None = None,
        tail: TextAppend | None = None,
    ) -> MessageView | None:
        """End a held job (with any text not yet written). None if fenced off."""
        with self._write():
            stamp = time.time()
            if tail is not None:
                self._apply(tail, stamp)
            return self._end(self._held(job_id, attempt, worker_id), job_id, outcome, error, stamp)

    def _end(
        self, where: pw.Expression, job_id: str, outcome: Outcome, error: str | None, stamp: float
    ) -> MessageView | None:
        ended = (
            Job.update(state=outcome.value, finished_at=stamp, error=error).where(where).execute()
        )
        if ended != 1:
            return None
        job = Job.get_by_id(job_id)
        Message.update(state=_MESSAGE_STATE[outcome].value, error=error, updated_at=stamp).where(
            Message.id == job.message_id
        ).execute()
        view = message_view(Message.get_by_id(job.message_id))
        if job.worker_id is not None:
            if outcome is Outcome.SUCCEEDED:
                self._credit(job.worker_id, len(view.content))
            elif outcome in (Outcome.FAILED, Outcome.TIMED_OUT):
                self._blame(job.worker_id, stamp)
        return view

    @staticmethod
    def _credit(worker_id: str, chars: int) -> None:
        Worker.update(
            failures=0,
            jobs_succeeded=Worker.jobs_succeeded + 1,
            chars_generated=Worker.chars_generated + chars,
        ).where(Worker.id == worker_id).execute()

    def _blame(self, worker_id: str, stamp: float) -> None:
        """Count a job the worker failed. While online, enough failures in a row
        quarantine it: no new jobs until the cool-down is over. (A worker that is
        draining or gone fails its jobs on purpose and is not blamed.)"""
        Worker.update(jobs_failed=Worker.jobs_failed + 1).where(Worker.id == worker_id).execute()
        Worker.update(failures=Worker.failures + 1).where(
            (Worker.id == worker_id) & (Worker.state == "online")
        ).execute()
        quarantined = (
            Worker.update(failures=0, quarantined_until=stamp + self.health.quarantine_s)
            .where((Worker.id == worker_id) & (Worker.failures >= self.health.quarantine_after))
            .execute()
        )
        if quarantined:
            log.warning(
                "worker %s quarantined for %.0f s after %d failed jobs in a row",
                worker_id,
                self.health.quarantine_s,
                self.health.quarantine_after,
            )

    def fail_or_retry(
        self,
        job_id: str,
        attempt: int,
        worker_id: str,
        reason: str,
        *,
        retryable: bool,
        tail: TextAppend | None = None,
    ) -> MessageView | None:
        """A held job failed. Re-queue it while no token has reached the user and
        attempts remain; otherwise fail it (its partial text is kept)."""
        with self._write():
            stamp = time.time()
            if tail is not None:
                self._apply(tail, stamp)
            return self._retry_or_end(
                self._held(job_id, attempt, worker_id),
                job_id,
                reason,
                retryable=retryable,
                outcome=Outcome.FAILED,
                stamp=stamp,
            )

    def _retry_or_end(
        self,
        where: pw.Expression,
        job_id: str,
        reason: str,
        *,
        retryable: bool,
        outcome: Outcome,
        stamp: float,
        after_tokens: bool = False,
    ) -> MessageView | None:
        """Re-queue the job while attempts remain and no token reached the user (or even
        after, with ``after_tokens``: the text starts again from empty); else end it."""
        job = Job.get_or_none(Job.id == job_id)
        if job is None:
            return None
        if retryable and job.attempt < self.max_attempts:
            untouched = pw.SQL("1 = 1") if after_tokens else (Job.chunks == 0)
            requeued = (
                Job.update(
                    state="queued",
                    worker_id=None,
                    avoid_worker_id=job.worker_id,
                    error=reason,
                    chunks=0,
                )
                .where(where & untouched)
                .execute()
            )
            if requeued == 1:
                # A refusal (before *accepted*: busy, draining) is not the worker's fault.
                if job.worker_id is not None and job.state == "running":
                    self._blame(job.worker_id, stamp)
                Message.update(
                    state=MessageState.QUEUED.value, content="", content_seq=-1, updated_at=stamp
                ).where(Message.id == job.message_id).execute()
                return message_view(Message.get_by_id(job.message_id))
        return self._end(where, job_id, outcome, reason, stamp)

    @staticmethod
    def not_held(worker_id: str, running: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Of the (job, attempt) pairs a worker says it runs, those it does not hold: the
        job ended or moved on while the worker was cut off. The worker should stop them."""
        if not running:
            return []
        held = {
            (str(job.id), int(job.attempt))
            for job in Job.select(Job.id, Job.attempt).where(
                Job.id.in_([job_id for job_id, _ in running])
                & (Job.worker_id == worker_id)
                & Job.state.in_(ACTIVE)
            )
        }
        return [pair for pair in running if pair not in held]

    def cancel(
        self, job_id: str, reason: str, tail: TextAppend | None = None
    ) -> tuple[MessageView | None, Cancel | None]:
        """Stop a job: a queued one ends at once; a held one ends with its text so far kept
        (``tail`` is what was received but not yet written), and the returned
        :class:`Cancel` is for its worker. (None, None) if the job already ended."""
        with self._write():
            stamp = time.time()
            job = Job.get_or_none(Job.id == job_id)
            if job is None:
                return None, None
            if job.state == "queued":
                where = (Job.id == job_id) & (Job.state == "queued")
                return self._end(where, job_id, Outcome.CANCELLED, reason, stamp), None
            if job.state not in ACTIVE:
                return None, None
            worker_id = str(job.worker_id)
            if tail is not None:
                self._apply(tail, stamp)
            where = self._held(job_id, job.attempt, worker_id)
            view = self._end(where, job_id, Outcome.CANCELLED, reason, stamp)
            return view, Cancel(worker_id, job_id, job.attempt, reason) if view else None

    # --- deadlines ----------------------------------------------------------------------

    def sweep(self, deadlines: Deadlines, now: float | None = None) -> SweepResult:
        """Apply every deadline once. Each expiry ends the job AND sets its message."""
        stamp = time.time() if now is None else now
        result = SweepResult(messages=[], cancels=[])
        with self._write():
            self._sweep_lost_workers(deadlines, stamp, result)
            self._sweep_unaccepted(deadlines, stamp, result)
            self._sweep_timeouts(deadlines, stamp, result)
            self._sweep_queue(deadlines, stamp, result)
        return result

    def _sweep_lost_workers(self, d: Deadlines, stamp: float, result: SweepResult) -> None:
        """Heartbeats are the authority: a worker silent past the grace period (or
        revoked) has lost its jobs. Its Last Will ("offline") only speeds things up for jobs
        that have not streamed yet, which are re-queued at once; a streaming job keeps the
        grace period to resume, since a broker restart also fires every Will while the
        workers live on, reconnect, and go on publishing."""
        stale = stamp - d.worker_grace_s
        silent = Worker.last_seen.is_null() | (Worker.last_seen < stale)
        gone = (Worker.state == "offline") & (Job.chunks == 0)
        lost = (
            Job.select(Job.id, Job.attempt, Job.worker_id)
            .join(Worker, on=(Job.worker_id == Worker.id))
            .where(Job.state.in_(ACTIVE) & (silent | gone | Worker.revoked_at.is_null(False)))
        )
        for job in list(lost):
            reason = "the worker generating this reply stopped responding"
            self._record(
                result,
                self._retry_or_end(
                    self._held(job.id, job.attempt, str(job.worker_id)),
                    job.id,
                    reason,
                    retryable=True,
                    outcome=Outcome.FAILED,
                    stamp=stamp,
                    after_tokens=d.requeue_lost_streaming,
                ),
            )

    def _sweep_unaccepted(self, d: Deadlines, stamp: float, result: SweepResult) -> None:
        late = Job.select(Job.id, Job.attempt, Job.worker_id).where(
            (Job.state == "assigned") & (Job.assigned_at < stamp - d.accept_s)
        )
        for job in list(late):
            reason = "the worker did not accept the job in time"
            where = self._held(job.id, job.attempt, str(job.worker_id)) & (Job.state == "assigned")
            self._record(
                result,
                self._retry_or_end(
                    where, job.id, reason, retryable=True, outcome=Outcome.FAILED, stamp=stamp
                ),
            )
            result.cancels.append(Cancel(str(job.worker_id), job.id, job.attempt, reason))

    def _sweep_timeouts(self, d: Deadlines, stamp: float, result: SweepResult) -> None:
        rules = [
            (
                (Job.state == "running")
                & Job.first_token_at.is_null()
                & (Job.accepted_at < stamp - d.first_token_s),
                f"no reply started within {d.first_token_s:.0f} s",
            ),
            (
                (Job.state == "running") & (Job.last_token_at < stamp - d.stall_s),
                f"the reply stalled for {d.stall_s:.0f} s",
            ),
            (
                Job.state.in_(ACTIVE) & (Job.assigned_at < stamp - d.reply_s),
                f"the reply took longer than {d.reply_s:.0f} s",
            ),
        ]
        for condition, reason in rules:
            for job in list(Job.select(Job.id, Job.attempt, Job.worker_id).where(condition)):
                where = self._held(job.id, job.attempt, str(job.worker_id))
                view = self._end(where, job.id, Outcome.TIMED_OUT, reason, stamp)
                if view is not None:
                    result.messages.append(view)
                    result.cancels.append(Cancel(str(job.worker_id), job.id, job.attempt, reason))

    def _sweep_queue(self, d: Deadlines, stamp: float, result: SweepResult) -> None:
        old = Job.select(Job.id).where(
            (Job.state == "queued") & (Job.created_at < stamp - d.queue_s)
        )
        reason = f"no worker could take this request within {d.queue_s:.0f} s"
        for job in list(old):
            where = (Job.id == job.id) & (Job.state == "queued")
            view = self._end(where, job.id, Outcome.TIMED_OUT, reason, stamp)
            if view is not None:
                result.messages.append(view)

    @staticmethod
    def _record(result: SweepResult, view: MessageView | None) -> None:
        if view is None:
            return
        result.messages.append(view)
        if view.state == MessageState.QUEUED:
            result.requeued += 1
