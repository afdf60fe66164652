"""The job queue as dispatch sees it: the queued jobs in serving order, and claiming them
for workers. A claim is one conditional UPDATE (the job must still be queued) whose row
count is checked, and it respects the worker's free slots as the database sees them."""

import json
import time
from collections.abc import Sequence

import peewee as pw

from coordinator.db import sql
from coordinator.db.database import write_transaction
from coordinator.db.views import message_views
from coordinator.jobs import statements as q
from coordinator.jobs.endings import Endings
from coordinator.jobs.fairness import QueuedJob, fair_order, startable
from coordinator.jobs.records import Pick, Where
from coordinator.jobs.states import JobState
from farm_protocol.chat import MessageView
from farm_protocol.codec import encode
from farm_protocol.payloads import MAX_PACKET_BYTES, ChatTurn, Generation, JobAssignment


def active_by_owner(db: pw.Database) -> dict[str, int]:
    """How many jobs each owner (API key, else user) has held by a worker right now."""
    return {str(owner): int(held) for owner, held in sql.execute(db, q.ACTIVE_BY_OWNER)}


def active_counts(db: pw.Database) -> dict[str, int]:
    """How many jobs each worker holds right now."""
    return {str(worker): int(held) for worker, held in sql.execute(db, q.ACTIVE_BY_WORKER)}


def queued_in_order(db: pw.Database, limit: int = 1000, *, lock: bool = False) -> list[QueuedJob]:
    """The oldest ``limit`` queued jobs, in serving order (round-robin by owner).

    With ``lock`` (inside a dispatch round's transaction) only the jobs that may start
    now (``startable``), and on PostgreSQL the rows are locked ``FOR UPDATE SKIP
    LOCKED``: a second coordinator dispatching at the same moment skips them and takes
    the next jobs instead of racing for the same ones."""
    locking = lock and not sql.is_sqlite(db)
    rows = sql.execute(db, q.QUEUED_OLDEST + (q.SKIP_LOCKED if locking else ""), (limit,))
    jobs = [QueuedJob(j, m, c, str(o), a, cap) for j, m, c, o, a, cap in rows]
    if not jobs:  # the round after a job ends, most often: nothing to order
        return jobs
    running = active_by_owner(db)
    order = fair_order(jobs, running)
    return startable(order, running) if lock else order


class JobQueue:
    def __init__(
        self,
        db: pw.Database,
        endings: Endings,
        *,
        context_messages: int,
        api_context_messages: int = 200,
    ) -> None:
        self.db = db
        self.endings = endings
        self.context_messages = context_messages
        # A programmatic client sends its whole conversation: it is kept, up to this.
        self.api_context_messages = api_context_messages

    def queued_jobs(self, limit: int = 1000, *, lock: bool = False) -> list[QueuedJob]:
        return queued_in_order(self.db, limit, lock=lock)

    def transaction(self) -> pw._atomic:
        """One write transaction around a whole dispatch round."""
        return write_transaction(self.db)

    def service_times(self, since: float, lifetime_s: float = 3600.0) -> dict[str, float]:
        """Each model's average slot time over its jobs that succeeded since ``since``
        (no job lives longer than ``lifetime_s``)."""
        rows = sql.execute(self.db, q.SERVICE_TIMES, (since - lifetime_s, since))
        return {str(model): float(avg) for model, avg in rows if avg is not None}

    def queued_views(self, positions: dict[str, int]) -> list[MessageView]:
        """The queued replies of these jobs, each with its queue position."""
        views = self._replies(list(positions), q.QUEUED_REPLY)
        return [v.model_copy(update={"queue_position": positions[str(v.job_id)]}) for v in views]

    def holder_views(self, assigned: Sequence[tuple[str, JobAssignment]]) -> list[MessageView]:
        """The replies of just-claimed jobs, naming the worker and attempt now holding
        them (published so the webapp knows whose chunks to forward)."""
        holders = {a.job_id: {"worker_id": worker, "attempt": a.attempt} for worker, a in assigned}
        if not holders:
            return []
        views = self._replies(list(holders))
        return [view.model_copy(update=holders[str(view.job_id)]) for view in views]

    def _replies(self, job_ids: list[str], also: str = "") -> list[MessageView]:
        return message_views(sql.execute_in(self.db, q.REPLIES_OF_JOBS + also, job_ids))

    def claim(self, job_id: str, worker_id: str, capacity: int) -> JobAssignment | None:
        """Give ``job_id`` to ``worker_id`` if it is still queued and the worker has a free
        slot. Atomic."""
        claimed = self.claim_many([Pick(job_id, worker_id, capacity)])
        return claimed[0][1] if claimed else None

    def claim_many(self, picks: Sequence[Pick]) -> list[tuple[str, JobAssignment]]:
        """Claim a dispatch round's picks in one transaction. On PostgreSQL the workers'
        rows are locked first, in id order, so two coordinators cannot overfill one
        worker. Picks that lost a race are skipped. Returns (worker id, assignment) for
        each claim that landed."""
        if not picks:
            return []
        with write_transaction(self.db):
            stamp = time.time()
            landed = self._claim(picks, stamp)
            return self._assignments(landed, stamp) if landed else []

    def _claim(self, picks: Sequence[Pick], stamp: float) -> list[Pick]:
        workers = sorted({p.worker_id for p in picks})
        if not sql.is_sqlite(self.db):
            sql.execute_in(self.db, q.LOCK_WORKERS, workers).fetchall()
        held = {
            str(worker): int(count)
            for worker, count in sql.execute_in(self.db, q.HELD_BY_WORKERS, workers)
        }
        running = self._held_by_owners(picks)
        landed: list[Pick] = []
        for pick in picks:
            if held.get(pick.worker_id, 0) >= pick.capacity:
                continue
            owner = pick.owner or ""
            if pick.cap is not None and running.get(owner, 0) >= pick.cap:
                continue  # another coordinator started this owner's job meanwhile
            claim = (pick.worker_id, stamp, pick.job_id)
            if sql.execute(self.db, q.CLAIM, claim).rowcount == 1:
                held[pick.worker_id] = held.get(pick.worker_id, 0) + 1
                running[owner] = running.get(owner, 0) + 1
                landed.append(pick)
        return landed

    def _held_by_owners(self, picks: Sequence[Pick]) -> dict[str, int]:
        """How many jobs each capped owner of ``picks`` has running, as committed now
        (each owner locked for this transaction on PostgreSQL)."""
        owners = sorted({p.owner for p in picks if p.cap is not None and p.owner})
        if not owners:
            return {}
        if not sql.is_sqlite(self.db):
            sql.execute(self.db, q.LOCK_OWNERS, (owners,)).fetchall()
        ids = sql.in_list(len(owners))
        rows = sql.execute(self.db, q.HELD_BY_OWNERS.format(ids=ids), [*owners, *owners])
        return {str(owner): int(count) for owner, count in rows}

    def _assignments(self, landed: list[Pick], stamp: float) -> list[tuple[str, JobAssignment]]:
        rows = {
            row[0]: row for row in sql.execute_in(self.db, q.CLAIMED, [p.job_id for p in landed])
        }
        assigned: list[tuple[str, JobAssignment]] = []
        for pick in landed:
            job_id, attempt, model, api_key_id, thread_id, asked_at, request, reply = rows[
                pick.job_id
            ]
            # An API request's own context and settings; a chat reply's is its branch's.
            asked = Generation.model_validate_json(request) if request else Generation()
            limit = self.api_context_messages if api_key_id else self.context_messages
            context = asked.messages or self._context(thread_id, reply, asked_at, limit)
            if not context:  # nothing to answer (the question was deleted): fail it
                where = Where(job_id, " AND attempt = %s", (attempt,))
                self.endings.end(where, JobState.FAILED, "there is nothing to reply to", stamp)
                continue
            assignment = fit_assignment(
                JobAssignment(
                    job_id=job_id,
                    thread_id=thread_id,
                    attempt=attempt,
                    model=model,
                    messages=context,
                    options=asked.options,
                    format=asked.format,
                    tools=asked.tools,
                    task=asked.task,
                    inputs=asked.inputs,
                    dimensions=asked.dimensions,
                    truncate=asked.truncate,
                    issued_at=stamp,
                )
            )
            if assignment is None:
                where = Where(job_id, " AND attempt = %s", (attempt,))
                reason = "the conversation is too long to send to a worker"
                self.endings.end(where, JobState.FAILED, reason, stamp)
                continue
            assigned.append((pick.worker_id, assignment))
        return assigned

    def _context(self, thread_id: str, reply_id: str, before: float, limit: int) -> list[ChatTurn]:
        """The thread's system prompt, then the last N messages of the reply's branch
        that completed (a failed or empty reply is left out),
        oldest first. One statement, written out once: building it with the query
        builder per job cost most of a dispatch round. The branch is read at most
        4N + 8 messages up (failed replies in between are skipped, not counted)."""
        walk = (reply_id, thread_id, 4 * limit + 8, thread_id, before, limit)
        rows = sql.execute(self.db, q.CONTEXT, walk)
        turns = sorted(rows.fetchall(), key=lambda r: (r[0], -r[3]))
        return [ChatTurn(role=role, content=content) for _, role, content, _ in turns]


ASSIGNMENT_BYTES = MAX_PACKET_BYTES - 64 * 1024  # room for the MQTT header and topic


def fit_assignment(assignment: JobAssignment) -> JobAssignment | None:
    """The assignment within what the broker carries: the oldest turns of a long history
    are left out (the system prompt and the question stay); None if even that is too
    long."""
    turns = list(assignment.messages)
    settings = len(
        json.dumps([assignment.tools, assignment.format, assignment.options, assignment.inputs])
    )
    if sum(len(t.content) for t in turns) * 6 + settings + 4096 < ASSIGNMENT_BYTES:
        return assignment  # fits whatever its characters (6 bytes is the most JSON takes)
    while len(encode(assignment)) > ASSIGNMENT_BYTES:
        dropped = next((i for i, t in enumerate(turns[:-1]) if t.role != "system"), None)
        if dropped is None:
            return None
        del turns[dropped]
        assignment = assignment.model_copy(update={"messages": turns})
    return assignment
