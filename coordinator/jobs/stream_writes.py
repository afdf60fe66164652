"""What a job's progress writes: the worker's *accepted*, and its text checkpoints in
batches. Every write is fenced by the job's attempt and worker, so a late message from an
earlier attempt never lands, and continues the stored text exactly where it ends."""

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import peewee as pw

from coordinator.db import sql
from coordinator.db.database import write_transaction
from coordinator.db.views import message_views
from coordinator.jobs import statements as q
from coordinator.jobs.records import ActiveJob, Applied, Landed, TextAppend, Written
from coordinator.jobs.states import JobState
from farm_protocol.chat import MessageView

log = logging.getLogger(__name__)


def _active(row: Sequence[Any]) -> ActiveJob:
    job, attempt, worker, message, thread, content, seq, created_at = row
    return ActiveJob(job, attempt, str(worker), message, thread, content, seq, created_at)


class StreamWrites:
    def __init__(self, db: pw.Database) -> None:
        self.db = db

    def active_job(self, job_id: str) -> ActiveJob | None:
        row = sql.execute(self.db, q.ACTIVE_JOB, (job_id,)).fetchone()
        return None if row is None else _active(row)

    def running_jobs(self) -> list[ActiveJob]:
        """Every job a worker has accepted, with the text the database holds."""
        return [_active(row) for row in sql.execute(self.db, q.RUNNING_JOBS).fetchall()]

    def accept(self, job_id: str, attempt: int, worker_id: str) -> bool:
        # one statement: atomic without a transaction around it
        changed = sql.execute(self.db, q.ACCEPT, (time.time(), job_id, attempt, worker_id))
        return bool(changed.rowcount == 1)

    def append_text(self, appends: Iterable[TextAppend]) -> list[MessageView]:
        """Write a batch of streamed text in one transaction. Returns the messages that
        just started generating (their first text landed)."""
        return self.write_texts(appends).started

    def write_texts(self, appends: Iterable[TextAppend]) -> Written:
        """Write a batch of streamed text in one transaction: the replies that started,
        and the jobs whose text would have left a gap (it is not written)."""
        written = Written()
        with write_transaction(self.db):
            # in job order: coordinators sharing a database lock the same rows in the
            # same order, so their batches wait for each other instead of deadlocking
            for item in sorted(appends, key=lambda a: (a.job_id, a.first_seq)):
                applied = self._apply(item, time.time())
                if applied.landed is Landed.STARTED:
                    (view,) = message_views(sql.execute_in(self.db, q.MESSAGES, [item.message_id]))
                    held = {"worker_id": item.worker_id, "attempt": item.attempt}
                    written.started.append(view.model_copy(update=held))
                elif applied.landed is Landed.AFTER_STOP:
                    views = message_views(sql.execute_in(self.db, q.MESSAGES, [item.message_id]))
                    written.stopped += views
                elif applied.landed is Landed.GAP:
                    written.gaps[item.job_id] = applied.stored_seq
                else:
                    written.gaps.pop(item.job_id, None)
        return written

    def _apply(self, item: TextAppend, stamp: float) -> Applied:
        return apply_text(self.db, item, stamp)

    def quiet_jobs(self, since: float) -> list[tuple[str, str, int, str, int]]:
        """Running jobs with no progress stored since ``since``: (job, thread, attempt,
        worker, last chunk stored)."""
        rows = sql.execute(self.db, q.QUIET_JOBS, (since,)).fetchall()
        return [(str(j), str(t), int(a), str(w), int(seq)) for j, t, a, w, seq in rows]

    def reconcile_running(
        self, worker_id: str, running: list[tuple[str, int]]
    ) -> list[tuple[str, int]]:
        """Of the (job, attempt) pairs a worker says it runs, return those it does not
        hold: the job ended or moved on while the worker was cut off, and the worker
        should stop them. Those it holds that are still only assigned are accepted (the
        worker's *accepted* was lost)."""
        if not running:
            return []
        rows = sql.execute_in(self.db, q.HELD_AMONG, [j for j, _ in running], (worker_id,))
        held: set[tuple[str, int]] = set()
        for job, attempt, state in rows:
            held.add((str(job), int(attempt)))
            if state == JobState.ASSIGNED:
                self.accept(str(job), int(attempt), worker_id)
        return [pair for pair in running if pair not in held]


def apply_text(db: pw.Database, item: TextAppend, stamp: float) -> Applied:
    """Apply one append (inside a write transaction) where the stored text ends."""
    fenced = sql.execute(
        db,
        q.TEXT_LANDED,
        (item.chunks, item.chunks, stamp, stamp, stamp, item.job_id, item.attempt, item.worker_id),
    ).rowcount
    if fenced != 1:
        return _after_stop(db, item, stamp)
    after = item.continues  # where the stored text most likely ends
    continued = sql.execute(
        db,
        q.TEXT_CONTINUES,
        (item.after(after), item.last_seq, stamp, item.message_id, after),
    ).rowcount
    if continued != 1:
        applied = _continue_text(db, item, stamp)
        if applied.landed is not Landed.WRITTEN:
            return applied
        after = applied.stored_seq
    if after >= 0:  # text was stored before: the reply is generating already
        return Applied(Landed.WRITTEN)
    first = sql.execute(db, q.REPLY_STARTED, (stamp, item.message_id)).rowcount
    return Applied(Landed.STARTED if first == 1 else Landed.WRITTEN)


def _after_stop(db: pw.Database, item: TextAppend, stamp: float) -> Applied:
    """Text for a job the coordinator stopped, from the worker and attempt it stopped:
    what it generated before it heard, kept with the reply (whose state stays)."""
    stopped = sql.execute(db, q.STOPPED_HELD, (item.job_id, item.attempt, item.worker_id))
    if stopped.fetchone() is None:
        return Applied(Landed.FENCED)
    applied = _continue_text(db, item, stamp)
    return Applied(Landed.AFTER_STOP) if applied.landed is Landed.WRITTEN else applied


def _continue_text(db: pw.Database, item: TextAppend, stamp: float) -> Applied:
    """The stored text does not end where this append begins: checkpoints overlap, and
    coordinators sharing the work write them in any order. Append only the chunks after
    the last one stored; none when the stored text ends before this append begins (the
    chunks in between are missing: the caller keeps the append and tries again). Written,
    it says where the stored text ended before."""
    row = sql.execute(db, q.STORED_UP_TO + sql.row_lock(db), (item.message_id,)).fetchone()
    if row is None:
        return Applied(Landed.FENCED)
    stored = int(row[0])
    if stored >= item.last_seq:
        return Applied(Landed.STORED)  # written already
    if stored < item.first_seq - 1:
        return Applied(Landed.GAP, stored)
    sql.execute(
        db,
        q.TEXT_CONTINUES,
        (item.after(stored), item.last_seq, stamp, item.message_id, stored),
    )
    return Applied(Landed.WRITTEN, stored)
