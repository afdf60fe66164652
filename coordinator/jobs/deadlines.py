"""Deadlines and lost workers, applied in one transaction per sweep (the janitor runs it
on a timer; the database's clock is the authority). Each expiry ends the job and its
reply together."""

import json
import time

import peewee as pw

from coordinator.db import sql
from coordinator.db.database import write_transaction
from coordinator.jobs import statements as q
from coordinator.jobs.endings import Endings
from coordinator.jobs.records import Cancel, Deadlines, SweepResult, Where
from coordinator.jobs.states import JobState
from farm_protocol.chat import MessageState, MessageView
from farm_protocol.models import normalize_model


class DeadlineSweep:
    def __init__(self, db: pw.Database, endings: Endings) -> None:
        self.db = db
        self.endings = endings

    def sweep(
        self, deadlines: Deadlines, now: float | None = None, *, unserved: bool = True
    ) -> SweepResult:
        """Apply every deadline once. With ``unserved``, also end the queued jobs of models
        no worker serves any more (a coordinator that has just started leaves that until
        the workers had time to say they are there)."""
        stamp = time.time() if now is None else now
        result = SweepResult()
        with write_transaction(self.db):
            self._lost_workers(deadlines, stamp, result)
            self._unaccepted(deadlines, stamp, result)
            self._timeouts(deadlines, stamp, result)
            self._queue(deadlines, stamp, result)
            if unserved:
                self._unserved(deadlines, stamp, result)
        return result

    def _lost_workers(self, d: Deadlines, stamp: float, result: SweepResult) -> None:
        """Heartbeats are the authority: a worker silent past the grace period (or
        revoked) has lost its jobs. Its Last Will ("offline") only speeds things up for jobs
        that have not streamed yet, which are re-queued at once; a streaming job keeps the
        grace period to resume, since a broker restart also fires every Will while the
        workers live on, reconnect, and go on publishing."""
        reason = "the worker generating this reply stopped responding"
        lost = sql.execute(self.db, q.LOST_WORKERS_JOBS, (stamp - d.worker_grace_s,))
        for job_id, attempt, worker_id in lost.fetchall():
            view = self.endings.retry_or_end(
                Where.held(job_id, attempt, str(worker_id)),
                reason,
                retryable=True,
                stamp=stamp,
                after_tokens=d.requeue_lost_streaming,
            )
            _record(result, view)

    def _unaccepted(self, d: Deadlines, stamp: float, result: SweepResult) -> None:
        reason = "the worker did not accept the job in time"
        late = sql.execute(self.db, q.UNACCEPTED, (stamp - d.accept_s,))
        for job_id, attempt, worker_id in late.fetchall():
            where = Where.held(job_id, attempt, str(worker_id), q.ONLY_ASSIGNED)
            _record(result, self.endings.retry_or_end(where, reason, retryable=True, stamp=stamp))
            result.cancels.append(Cancel(str(worker_id), job_id, attempt, reason))

    def _timeouts(self, d: Deadlines, stamp: float, result: SweepResult) -> None:
        rules = [
            (q.NO_FIRST_TOKEN, d.first_token_s, f"no reply started within {d.first_token_s:.0f} s"),
            (q.STALLED, d.stall_s, f"the reply stalled for {d.stall_s:.0f} s"),
            (q.TOO_LONG, d.reply_s, f"the reply took longer than {d.reply_s:.0f} s"),
        ]
        for statement, limit_s, reason in rules:
            for job_id, attempt, worker_id in sql.execute(
                self.db, statement, (stamp - limit_s,)
            ).fetchall():
                where = Where.held(job_id, attempt, str(worker_id))
                view = self.endings.end(where, JobState.TIMED_OUT, reason, stamp)
                if view is not None:
                    result.messages.append(view)
                    result.cancels.append(Cancel(str(worker_id), job_id, attempt, reason))

    def _queue(self, d: Deadlines, stamp: float, result: SweepResult) -> None:
        reason = f"no worker could take this request within {d.queue_s:.0f} s"
        cutoff = (stamp - d.queue_s, stamp - d.queue_s)
        for (job_id,) in sql.execute(self.db, q.QUEUED_TOO_LONG, cutoff).fetchall():
            where = Where.in_state(job_id, JobState.QUEUED)
            view = self.endings.end(where, JobState.TIMED_OUT, reason, stamp)
            if view is not None:
                result.messages.append(view)

    def _unserved(self, d: Deadlines, stamp: float, result: SweepResult) -> None:
        """A queued job whose model the last worker serving it took away (stopped,
        killed, revoked, draining) ends now: waiting would only end at its queue deadline
        (a worker that is silent for the grace period is gone)."""
        served: set[str] = set()
        for (models,) in sql.execute(
            self.db, q.PRESENT_WORKERS_MODELS, (stamp - d.worker_grace_s,)
        ):
            served.update(json.loads(models))
        for (model,) in sql.execute(self.db, q.QUEUED_MODELS).fetchall():
            if normalize_model(model) in served:
                continue
            reason = f"no worker serves {model} right now"
            for (job_id,) in sql.execute(self.db, q.QUEUED_OF_MODEL, (model,)).fetchall():
                where = Where.in_state(job_id, JobState.QUEUED)
                view = self.endings.end(where, JobState.TIMED_OUT, reason, stamp)
                if view is not None:
                    result.messages.append(view)


def _record(result: SweepResult, view: MessageView | None) -> None:
    if view is None:
        return
    result.messages.append(view)
    if view.state == MessageState.QUEUED:
        result.requeued += 1
