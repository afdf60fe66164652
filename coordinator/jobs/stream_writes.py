"""What a job's stream writes: the worker's *accepted*, and its text in batches. Every
write is fenced by the job's attempt and worker, so a late message from an earlier
attempt never lands."""

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import peewee as pw

from coordinator.db import sql
from coordinator.db.database import write_transaction
from coordinator.db.views import message_views
from coordinator.jobs import statements as q
from coordinator.jobs.records import ActiveJob, TextAppend
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
        started: list[MessageView] = []
        with write_transaction(self.db):
            # in job order: coordinators sharing a database lock the same rows in the
            # same order, so their batches wait for each other instead of deadlocking
            for item in sorted(appends, key=lambda a: a.job_id):
                if self._apply(item, time.time()):
                    (view,) = message_views(sql.execute_in(self.db, q.MESSAGES, [item.message_id]))
                    held = {"worker_id": item.worker_id, "attempt": item.attempt}
                    started.append(view.model_copy(update=held))
        return started

    def _apply(self, item: TextAppend, stamp: float) -> bool:
        return apply_text(self.db, item, stamp)

    def not_held(self, worker_id: str, running: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Of the (job, attempt) pairs a worker says it runs, those it does not hold: the
        job ended or moved on while the worker was cut off. The worker should stop them."""
        if not running:
            return []
        rows = sql.execute_in(self.db, q.HELD_AMONG, [j for j, _ in running], (worker_id,))
        held = {(str(job), int(attempt)) for job, attempt in rows}
        return [pair for pair in running if pair not in held]


def apply_text(db: pw.Database, item: TextAppend, stamp: float) -> bool:
    """Apply one append (inside a write transaction); True if it was the attempt's first
    text."""
    fenced = sql.execute(
        db,
        q.TEXT_LANDED,
        (item.chunks, stamp, stamp, stamp, item.job_id, item.attempt, item.worker_id),
    ).rowcount
    if fenced != 1:
        return False
    first = sql.execute(db, q.REPLY_STARTED, (stamp, item.message_id)).rowcount
    continued = sql.execute(
        db,
        q.TEXT_CONTINUES,
        (item.text, item.last_seq, stamp, item.message_id, item.first_seq - 1),
    ).rowcount
    if continued != 1:
        _continue_text(db, item, stamp)
    return bool(first == 1)


def _continue_text(db: pw.Database, item: TextAppend, stamp: float) -> None:
    """The stored text does not end where this append begins: another coordinator
    sharing the database (each receives every chunk, and writes on its own schedule)
    wrote some of it, or all. Append only the chunks after the last one stored."""
    row = sql.execute(db, q.STORED_UP_TO + sql.row_lock(db), (item.message_id,)).fetchone()
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
        db,
        q.TEXT_CONTINUES,
        (item.after(stored), item.last_seq, stamp, item.message_id, stored),
    )
