"""How a job ends: finished by its worker, failed (and perhaps retried), or cancelled.
Each ending is one conditional write whose row count is checked, and the reply takes the
same end in the same transaction."""

import hashlib
import logging
import time
from collections.abc import Callable, Sequence

import peewee as pw

from coordinator.db import sql
from coordinator.db.database import write_transaction
from coordinator.db.views import message_views
from coordinator.jobs import statements as q
from coordinator.jobs.health import WorkerHealth
from coordinator.jobs.records import (
    ActiveJob,
    Cancel,
    Expected,
    Finished,
    Landed,
    TextAppend,
    Where,
)
from coordinator.jobs.states import ACTIVE, JobState
from coordinator.jobs.stream_writes import apply_text
from farm_protocol.chat import MessageView

log = logging.getLogger(__name__)

# Text received for a job and not yet written, written before it ends.
Tail = TextAppend | Sequence[TextAppend] | None


class Endings:
    def __init__(self, db: pw.Database, *, max_attempts: int, health: WorkerHealth) -> None:
        self.db = db
        self.max_attempts = max_attempts
        self.health = health
        # told of every job this process ends (in the database thread, in the transaction)
        self.on_ended: Callable[[JobState], None] = lambda state: None

    def finish(
        self,
        job_id: str,
        attempt: int,
        worker_id: str,
        outcome: JobState,
        error: str | None = None,
        tail: Tail = None,
    ) -> MessageView | None:
        """End a held job (with any text not yet written). None if fenced off."""
        with write_transaction(self.db):
            stamp = time.time()
            self._apply(tail, stamp)
            return self.end(Where.held(job_id, attempt, worker_id), outcome, error, stamp)

    def finish_checked(
        self, job: ActiveJob, expected: Expected, tail: Sequence[TextAppend]
    ) -> Finished:
        """A worker's *done*: write the text it carries, then check the stored reply
        against it. Succeeded when it holds exactly the worker's text; failed when it
        cannot (more chunks than the worker sent, or a different text); and not ended
        yet while chunks before the end are missing (another coordinator may still be
        writing them)."""
        with write_transaction(self.db):
            stamp = time.time()
            started = self._apply(tail, stamp)
            row = sql.execute(self.db, q.STORED_TEXT, (job.message_id,)).fetchone()
            if row is None:
                return Finished()
            stored_seq, content = int(row[0]), str(row[1])
            if stored_seq + 1 < expected.chunks:
                return Finished(missing_after=stored_seq, started=started)
            exact = (
                stored_seq + 1 == expected.chunks
                and len(content) == expected.chars
                and hashlib.sha256(content.encode()).hexdigest() == expected.sha256
            )
            if not exact:
                log.warning(
                    "job %s: stored text differs from the worker's (%d/%d chunks, %d/%d chars)",
                    job.job_id,
                    stored_seq + 1,
                    expected.chunks,
                    len(content),
                    expected.chars,
                )
            if exact:
                served = (job.job_id, stamp, job.job_id, job.message_id)
                sql.execute(self.db, q.REPLY_USAGE, (*expected.usage, *served))
            outcome = JobState.SUCCEEDED if exact else JobState.FAILED
            error = None if exact else "the reply arrived incomplete or corrupted"
            where = Where.held(job.job_id, job.attempt, job.worker_id)
            return Finished(view=self.end(where, outcome, error, stamp), started=started)

    def _apply(self, tail: Tail, stamp: float) -> bool:
        """Write ``tail``; whether that started the reply (its first text)."""
        if tail is None:
            return False
        started = False
        for item in [tail] if isinstance(tail, TextAppend) else tail:
            started |= apply_text(self.db, item, stamp).landed is Landed.STARTED
        return started

    def fail_or_retry(
        self,
        job_id: str,
        attempt: int,
        worker_id: str,
        reason: str,
        *,
        retryable: bool,
        tail: Tail = None,
    ) -> MessageView | None:
        """A held job failed. Re-queue it while no token has reached the user and
        attempts remain; otherwise fail it (its partial text is kept)."""
        with write_transaction(self.db):
            stamp = time.time()
            self._apply(tail, stamp)
            where = Where.held(job_id, attempt, worker_id)
            return self.retry_or_end(where, reason, retryable=retryable, stamp=stamp)

    def cancel(
        self, job_id: str, reason: str, tail: Tail = None
    ) -> tuple[MessageView | None, Cancel | None]:
        """Stop a job: a queued one ends at once; a held one ends with its text so far kept
        (``tail`` is what was received but not yet written), and the returned
        :class:`Cancel` is for its worker. (None, None) if the job already ended."""
        with write_transaction(self.db):
            stamp = time.time()
            row = sql.execute(self.db, q.JOB_FOR_ENDING, (job_id,)).fetchone()
            if row is None:
                return None, None
            state, attempt, worker_id = JobState(row[0]), int(row[1]), str(row[2])
            if state is JobState.QUEUED:
                where = Where.in_state(job_id, JobState.QUEUED)
                return self.end(where, JobState.CANCELLED, reason, stamp), None
            if state not in ACTIVE:
                return None, None
            self._apply(tail, stamp)
            where = Where.held(job_id, attempt, worker_id)
            view = self.end(where, JobState.CANCELLED, reason, stamp)
            return view, Cancel(worker_id, job_id, attempt, reason) if view else None

    def end(
        self, where: Where, outcome: JobState, error: str | None, stamp: float
    ) -> MessageView | None:
        """End the job if ``where`` still holds: its reply takes the same end, and its
        worker the credit or the blame. None if it no longer holds."""
        ended = sql.execute(
            self.db,
            q.END + where.condition,
            (outcome.value, stamp, error, where.job_id, *where.params),
        ).rowcount
        if ended != 1:
            return None
        self.on_ended(outcome)
        message_id, worker_id = sql.execute(self.db, q.ENDED_JOB, (where.job_id,)).fetchone()
        reply_state = outcome.reply_state.value
        sql.execute(self.db, q.REPLY_ENDED, (reply_state, error, stamp, message_id))
        view = self.reply(message_id)
        if worker_id is not None:
            if outcome is JobState.SUCCEEDED:
                self.health.credit(worker_id, len(view.content))
            elif outcome in (JobState.FAILED, JobState.TIMED_OUT):
                self.health.blame(worker_id, stamp, message_id)
        return view

    def retry_or_end(
        self,
        where: Where,
        reason: str,
        *,
        retryable: bool,
        stamp: float,
        after_tokens: bool = False,
    ) -> MessageView | None:
        """Re-queue the job while attempts remain and no token reached the user (or even
        after, with ``after_tokens``: the text starts again from empty); else fail it."""
        row = sql.execute(self.db, q.JOB_FOR_ENDING, (where.job_id,)).fetchone()
        if row is None:
            return None
        state, attempt, worker_id, message_id, _ = row
        if retryable and attempt < self.max_attempts:
            untouched = where if after_tokens else where.but(q.NO_TEXT_YET)
            requeued = sql.execute(
                self.db,
                q.REQUEUE + untouched.condition,
                (worker_id, reason, where.job_id, *untouched.params),
            ).rowcount
            if requeued == 1:
                # A refusal (before *accepted*: busy, draining) is not the worker's fault.
                if worker_id is not None and state == JobState.RUNNING:
                    self.health.blame(worker_id, stamp, message_id)
                sql.execute(self.db, q.REPLY_REQUEUED, (stamp, message_id))
                return self.reply(message_id)
        return self.end(where, JobState.FAILED, reason, stamp)

    def reply(self, message_id: str) -> MessageView:
        (view,) = message_views(sql.execute_in(self.db, q.MESSAGES, [message_id]))
        return view
