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

from coordinator.db import sql
from coordinator.db.database import write_transaction
from coordinator.db.tables import Job, Message, Worker
from coordinator.db.views import message_view
from coordinator.jobs.fairness import QueuedJob, fair_order
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
    """Text streamed since the last write, for one job attempt: chunks ``first_seq`` to
    ``last_seq``, joined."""

    job_id: str
    attempt: int
    worker_id: str
    message_id: str
    text: str
    last_seq: int  # the highest chunk seq included so far
    chunks: int  # chunks applied so far in this attempt
    starts: tuple[int, ...] = (0,)  # where each chunk from first_seq on starts in text

    @property
    def first_seq(self) -> int:
        return self.last_seq - len(self.starts) + 1

    def after(self, seq: int) -> str:
        """The text of this append's chunks after chunk ``seq`` (first_seq - 1 or more)."""
        if seq >= self.last_seq:
            return ""
        return self.text[self.starts[seq + 1 - self.first_seq] :]


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


def _bound() -> pw.Database:
    """The database the tables are bound to (for the module-level queries)."""
    return cast(pw.Database, Job._meta.database)


_ACTIVE_IN = "('assigned', 'running')"
_HELD = "id = %s AND attempt = %s AND worker_id = %s AND state IN " + _ACTIVE_IN


def row_tuples(query: "pw.ModelSelect[Any]") -> list[tuple[Any, ...]]:
    """A query's rows as plain tuples (peewee's stubs type them as model instances)."""
    return cast(list[tuple[Any, ...]], list(query.tuples()))


def active_by_owner() -> dict[str, int]:
    """How many jobs each owner (API key, else user) has held by a worker right now."""
    rows = sql.execute(
        _bound(),
        "SELECT COALESCE(api_key_id, user_id), COUNT(*) FROM job WHERE state IN "
        + _ACTIVE_IN
        + " GROUP BY COALESCE(api_key_id, user_id)",
    )
    return {str(owner): int(held) for owner, held in rows}


def queued_in_order(limit: int = 1000, *, lock: bool = False) -> list[QueuedJob]:
    """The oldest ``limit`` queued jobs, in serving order (round-robin by owner).

    With ``lock`` (inside a dispatch round's transaction, on PostgreSQL) the rows are
    locked ``FOR UPDATE SKIP LOCKED``: a second coordinator dispatching at the same moment
    skips them and takes the next jobs instead of racing for the same ones."""
    db = _bound()
    locking = lock and not isinstance(Job._meta.database.obj, pw.SqliteDatabase)
    rows = sql.execute(
        db,
        "SELECT id, model, created_at, COALESCE(api_key_id, user_id), avoid_worker_id FROM job"
        " WHERE state = 'queued' ORDER BY created_at, id LIMIT %s"
        + (" FOR UPDATE SKIP LOCKED" if locking else ""),
        (limit,),
    )
    jobs = [QueuedJob(j, m, c, str(o), a) for j, m, c, o, a in rows]
    return fair_order(jobs, active_by_owner())


def active_counts() -> dict[str, int]:
    """How many jobs each worker holds right now."""
    rows = sql.execute(
        _bound(),
        "SELECT worker_id, COUNT(*) FROM job WHERE state IN " + _ACTIVE_IN + " GROUP BY worker_id",
    )
    return {str(worker): int(held) for worker, held in rows}


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
        return write_transaction(self.db)

    # --- dispatch -----------------------------------------------------------------------

    def queued_jobs(self, limit: int = 1000, *, lock: bool = False) -> list[QueuedJob]:
        return queued_in_order(limit, lock=lock)

    def transaction(self) -> pw._atomic:
        """One write transaction around a whole dispatch round."""
        return self._write()

    def queued_views(self, positions: dict[str, int]) -> list[MessageView]:
        """The queued replies of these jobs, each with its queue position."""
        views = self._views_of_jobs(list(positions), "AND m.state = 'queued'")
        return [v.model_copy(update={"queue_position": positions[str(v.job_id)]}) for v in views]

    def _views_of_jobs(self, job_ids: list[str], also: str = "") -> list[MessageView]:
        """The replies of these jobs (found through the job: message.job_id has no index)."""
        columns = ", ".join(f"m.{c.strip()}" for c in sql.MESSAGE_COLUMNS.split(","))
        return sql.message_views(
            sql.execute(
                self.db,
                f"SELECT {columns} FROM job j JOIN message m ON m.id = j.message_id"
                f" WHERE j.id IN {sql.in_list(len(job_ids))} AND m.job_id = j.id {also}",
                job_ids,
            )
        )

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
            listed = sql.in_list(len(workers))
            if not isinstance(self.db, pw.SqliteDatabase):
                sql.execute(
                    self.db,
                    f"SELECT id FROM worker WHERE id IN {listed} ORDER BY id FOR UPDATE",
                    workers,
                ).fetchall()
            held: dict[str, int] = {
                str(worker): int(count)
                for worker, count in sql.execute(
                    self.db,
                    f"SELECT worker_id, COUNT(*) FROM job WHERE worker_id IN {listed}"
                    f" AND state IN {_ACTIVE_IN} GROUP BY worker_id",
                    workers,
                )
            }
            stamp = time.time()
            landed: list[Pick] = []
            for pick in picks:
                if held.get(pick.worker_id, 0) >= pick.capacity:
                    continue
                claim = (pick.worker_id, stamp, pick.job_id)
                claimed = sql.execute(self.db, _CLAIM, claim).rowcount
                if claimed == 1:
                    held[pick.worker_id] = held.get(pick.worker_id, 0) + 1
                    landed.append(pick)
            if not landed:
                return []
            ids = [p.job_id for p in landed]
            rows = {
                row[0]: row
                for row in sql.execute(
                    self.db,
                    "SELECT j.id, j.attempt, j.model, j.api_key_id, m.thread_id, m.created_at"
                    f" FROM job j JOIN message m ON m.id = j.message_id WHERE j.id IN"
                    f" {sql.in_list(len(ids))}",
                    ids,
                )
            }
            assigned: list[tuple[str, JobAssignment]] = []
            for pick in landed:
                job_id, attempt, model, api_key_id, thread_id, asked_at = rows[pick.job_id]
                limit = self.api_context_messages if api_key_id else self.context_messages
                context = self._context(thread_id, asked_at, limit)
                if not context:  # nothing to answer (the question was deleted): fail it
                    where = (Job.id == job_id) & (Job.attempt == attempt)
                    self._end(where, job_id, Outcome.FAILED, "there is nothing to reply to", stamp)
                    continue
                assignment = JobAssignment(
                    job_id=job_id,
                    attempt=attempt,
                    model=model,
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
        rows = sql.execute(self.db, _CONTEXT, (thread_id, before, thread_id, before, limit))
        turns = sorted(rows.fetchall(), key=lambda r: (r[0], r[3]))
        return [ChatTurn(role=role, content=content) for _, role, content, _ in turns]

    # --- the event path -----------------------------------------------------------------

    def active_job(self, job_id: str) -> ActiveJob | None:
        row = sql.execute(
            self.db,
            "SELECT j.id, j.attempt, j.worker_id, m.id, m.thread_id, m.content, m.content_seq,"
            " j.created_at FROM job j JOIN message m ON m.id = j.message_id"
            " WHERE j.id = %s AND j.state IN " + _ACTIVE_IN,
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        job, attempt, worker, message, thread, content, seq, created_at = row
        return ActiveJob(job, attempt, str(worker), message, thread, content, seq, created_at)

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
        changed = sql.execute(  # one statement: atomic without a transaction around it
            self.db,
            "UPDATE job SET state = 'running', accepted_at = %s WHERE "
            + _HELD
            + " AND state = 'assigned'",
            (time.time(), job_id, attempt, worker_id),
        ).rowcount
        return bool(changed == 1)

    def append_text(self, appends: Iterable[TextAppend]) -> list[MessageView]:
        """Write a batch of streamed text in one transaction. Returns the messages that
        just started generating (their first text landed)."""
        started: list[MessageView] = []
        with self._write():
            # in job order: coordinators sharing a database lock the same rows in the
            # same order, so their batches wait for each other instead of deadlocking
            for item in sorted(appends, key=lambda a: a.job_id):
                if self._apply(item, time.time()):
                    (view,) = self._views([item.message_id])
                    held = {"worker_id": item.worker_id, "attempt": item.attempt}
                    started.append(view.model_copy(update=held))
        return started

    def _views(self, message_ids: list[str]) -> list[MessageView]:
        return sql.message_views(
            sql.execute(
                self.db,
                f"SELECT {sql.MESSAGE_COLUMNS} FROM message WHERE id IN"
                f" {sql.in_list(len(message_ids))}",
                message_ids,
            )
        )

    def holder_views(self, assigned: Sequence[tuple[str, JobAssignment]]) -> list[MessageView]:
        """The replies of just-claimed jobs, naming the worker and attempt now holding
        them (published so the webapp knows whose chunks to forward)."""
        holders = {a.job_id: (worker, a.attempt) for worker, a in assigned}
        if not holders:
            return []
        return [
            view.model_copy(
                update={
                    "worker_id": holders[str(view.job_id)][0],
                    "attempt": holders[str(view.job_id)][1],
                }
            )
            for view in self._views_of_jobs(list(holders))
        ]

    def _apply(self, item: TextAppend, stamp: float) -> bool:
        """Apply one append; True if it was the attempt's first text."""
        fenced = sql.execute(
            self.db,
            "UPDATE job SET state = 'running', chunks = %s, last_token_at = %s,"
            " first_token_at = COALESCE(first_token_at, %s),"
            " accepted_at = COALESCE(accepted_at, %s) WHERE " + _HELD,
            (item.chunks, stamp, stamp, stamp, item.job_id, item.attempt, item.worker_id),
        ).rowcount
        if fenced != 1:
            return False
        first = sql.execute(
            self.db,
            "UPDATE message SET state = 'generating', updated_at = %s"
            " WHERE id = %s AND state = 'queued'",
            (stamp, item.message_id),
        ).rowcount
        continued = sql.execute(
            self.db,
            "UPDATE message SET content = content || %s, content_seq = %s, updated_at = %s"
            " WHERE id = %s AND content_seq = %s",
            (item.text, item.last_seq, stamp, item.message_id, item.first_seq - 1),
        ).rowcount
        if continued != 1:
            self._continue_text(item, stamp)
        return bool(first == 1)

    def _continue_text(self, item: TextAppend, stamp: float) -> None:
        """The stored text does not end where this append begins: another coordinator
        sharing the database (each receives every chunk, and writes on its own schedule)
        wrote some of it, or all. Append only the chunks after the last one stored."""
        row = sql.execute(
            self.db,
            "SELECT content_seq FROM message WHERE id = %s" + sql.row_lock(self.db),
            (item.message_id,),
        ).fetchone()
        if row is None or row[0] >= item.last_seq:
            return  # written already
        stored = int(row[0])
        if stored < item.first_seq - 1:  # the chunks in between are not this append's
            log.warning(
                "job %s: text stored up to chunk %d, this write starts at %d: left to the"
                " writer holding the chunks in between",
                item.job_id,
                stored,
                item.first_seq,
            )
            return
        sql.execute(
            self.db,
            "UPDATE message SET content = content || %s, content_seq = %s, updated_at = %s"
            " WHERE id = %s AND content_seq = %s",
            (item.after(stored), item.last_seq, stamp, item.message_id, stored),
        )

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
            ended = sql.execute(
                self.db,
                "UPDATE job SET state = %s, finished_at = %s, error = %s WHERE " + _HELD,
                (outcome.value, stamp, error, job_id, attempt, worker_id),
            ).rowcount
            return self._ended(job_id, outcome, error, stamp) if ended == 1 else None

    def _end(
        self, where: pw.Expression, job_id: str, outcome: Outcome, error: str | None, stamp: float
    ) -> MessageView | None:
        ended = (
            Job.update(state=outcome.value, finished_at=stamp, error=error).where(where).execute()
        )
        return self._ended(job_id, outcome, error, stamp) if ended == 1 else None

    def _ended(self, job_id: str, outcome: Outcome, error: str | None, stamp: float) -> MessageView:
        """The job has just ended: its message takes the same end, and its worker the
        credit or the blame."""
        message_id, worker_id = sql.execute(
            self.db, "SELECT message_id, worker_id FROM job WHERE id = %s", (job_id,)
        ).fetchone()
        sql.execute(
            self.db,
            "UPDATE message SET state = %s, error = %s, updated_at = %s WHERE id = %s",
            (_MESSAGE_STATE[outcome].value, error, stamp, message_id),
        )
        (view,) = self._views([message_id])
        if worker_id is not None:
            if outcome is Outcome.SUCCEEDED:
                self._credit(worker_id, len(view.content))
            elif outcome in (Outcome.FAILED, Outcome.TIMED_OUT):
                self._blame(worker_id, stamp, message_id)
        return view

    def _credit(self, worker_id: str, chars: int) -> None:
        sql.execute(
            self.db,
            "UPDATE worker SET failures = 0, jobs_succeeded = jobs_succeeded + 1,"
            " chars_generated = chars_generated + %s WHERE id = %s",
            (chars, worker_id),
        )

    def _blame(self, worker_id: str, stamp: float, message_id: str) -> None:
        """Count a job the worker failed. While online, enough failed jobs in a row
        quarantine it: no new jobs until the cool-down is over. (A worker that is
        draining or gone fails its jobs on purpose and is not blamed.)

        A reply counts once against a worker, however many of its attempts fail there,
        and however often its user retries it (``reply_failure``): a request that fails on
        the farm's only worker every time says as much about the request as about the
        worker, and must not take that worker out of the farm on its own."""
        counted = sql.execute(
            self.db,
            "INSERT INTO reply_failure (message_id, worker_id, created_at) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (message_id, worker_id, stamp),
        ).rowcount
        if counted != 1:
            return
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
                    self._blame(job.worker_id, stamp, job.message_id)
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
