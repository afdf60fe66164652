"""Read-only views of the queue and the fleet, for the admin API and the metrics."""

import json
import time
from typing import Any, cast

import peewee as pw
from pydantic import BaseModel

from coordinator.db.tables import Job, Message, Worker
from coordinator.jobs.fairness import positions
from coordinator.jobs.queue import active_counts, queued_in_order
from coordinator.jobs.states import ACTIVE, JobState
from farm_protocol.models import display_model, normalize_model


def _rows(db: pw.Database, query: "pw.ModelSelect[Any]") -> list[tuple[Any, ...]]:
    """A query's rows as plain tuples, run on ``db``."""
    return cast(list[tuple[Any, ...]], list(query.tuples().execute(db)))


class JobInfo(BaseModel):
    job_id: str
    state: str
    model: str
    attempt: int
    worker_id: str | None
    user_id: str | None
    api_key_id: str | None
    message_id: str
    chunks: int
    error: str | None
    queue_position: int | None
    created_at: float
    assigned_at: float | None
    accepted_at: float | None
    first_token_at: float | None
    finished_at: float | None


class ModelQueue(BaseModel):
    queued: int
    oldest_wait_s: float


class QueueStats(BaseModel):
    queued: int
    running: int
    by_model: dict[str, ModelQueue]
    jobs_by_state: dict[str, int]
    workers_online: int
    workers_quarantined: int
    workers_registered: int
    slots_free: int


def _info(row: Job, places: dict[str, int]) -> JobInfo:
    return JobInfo(
        job_id=row.id,
        state=row.state,
        model=row.model,
        attempt=row.attempt,
        worker_id=row.worker_id,
        user_id=row.user_id,
        api_key_id=row.api_key_id,
        message_id=row.message_id,
        chunks=row.chunks,
        error=row.error,
        queue_position=places.get(row.id),
        created_at=row.created_at,
        assigned_at=row.assigned_at,
        accepted_at=row.accepted_at,
        first_token_at=row.first_token_at,
        finished_at=row.finished_at,
    )


def list_jobs(db: pw.Database, state: str | None = None, limit: int = 100) -> list[JobInfo]:
    """The newest ``limit`` jobs, optionally in one state."""
    if state is not None and state not in set(JobState):
        raise ValueError(f"state must be one of {', '.join(JobState)}")
    if not 1 <= limit <= 1000:
        raise ValueError("limit must be between 1 and 1000")
    query = Job.select().order_by(Job.created_at.desc()).limit(limit)
    if state is not None:
        query = query.where(Job.state == state)
    places = positions(queued_in_order(db)) if state in (None, JobState.QUEUED) else {}
    return [_info(row, places) for row in query.execute(db)]


def job(db: pw.Database, job_id: str) -> JobInfo | None:
    found = next(iter(Job.select().where(Job.id == job_id).execute(db)), None)
    if found is None:
        return None
    places = positions(queued_in_order(db)) if found.state == JobState.QUEUED else {}
    return _info(found, places)


def jobs_by_state(db: pw.Database, states: tuple[JobState, ...] = ()) -> dict[str, int]:
    """How many jobs are in each state (only in ``states``, when given: the live ones are
    a few rows of the (state, created_at) index; all of them is every job ever)."""
    counts: dict[str, Any] = {str(s): 0 for s in JobState}
    query = Job.select(Job.state, pw.fn.COUNT(Job.id)).group_by(Job.state)
    if states:
        query = query.where(Job.state.in_([s.value for s in states]))
    for state, count in _rows(db, query):
        counts[str(state)] = int(count)
    return counts


def queue_stats(db: pw.Database, grace_s: float, *, totals: bool = True) -> QueueStats:
    """The queue and the fleet now; with ``totals``, also every job ever by final state
    (a count over the whole job table: for the admin API, not for every scrape)."""
    stamp = time.time()
    by_model: dict[str, ModelQueue] = {}
    rows = _rows(
        db,
        Job.select(Job.model, pw.fn.COUNT(Job.id), pw.fn.MIN(Job.created_at))
        .where(Job.state == JobState.QUEUED)
        .group_by(Job.model),
    )
    for model, count, oldest in rows:
        name = normalize_model(str(model))
        known = by_model.get(name, ModelQueue(queued=0, oldest_wait_s=0.0))
        by_model[name] = ModelQueue(
            queued=known.queued + int(count),
            oldest_wait_s=max(known.oldest_wait_s, round(stamp - float(oldest), 3)),
        )
    states = jobs_by_state(db, () if totals else tuple(ACTIVE))
    live = Worker.select().where(
        Worker.revoked_at.is_null()
        & (Worker.state == "online")
        & (Worker.last_seen >= stamp - grace_s)
    )
    online = list(live.execute(db))
    quarantined = [w for w in online if w.quarantined_until and w.quarantined_until > stamp]
    held = active_counts(db)
    free = sum(max(int(w.capacity) - held.get(w.id, 0), 0) for w in online if w not in quarantined)
    return QueueStats(
        queued=states[JobState.QUEUED],
        running=states[JobState.ASSIGNED] + states[JobState.RUNNING],
        by_model=by_model,
        jobs_by_state=states,
        workers_online=len(online),
        workers_quarantined=len(quarantined),
        workers_registered=Worker.select().where(Worker.revoked_at.is_null()).count(db),
        slots_free=free,
    )


class FarmWorker(BaseModel):
    name: str
    models: list[str]
    state: str  # busy, idle, draining, unavailable
    jobs_running: int
    capacity: int
    replies_served: int
    chars_served: int
    recent_tokens_per_s: float  # generated, over the last minute
    simulated: bool


class FarmView(BaseModel):
    """What anyone may see of the farm: who contributes, how busy it is."""

    workers: list[FarmWorker]
    queue_depth: int
    replies_last_minute: int
    tokens_per_s_last_minute: float  # generated, as the models counted them


def farm_view(
    db: pw.Database, grace_s: float, job_lifetime_s: float, window_s: float = 60.0
) -> FarmView:
    """``job_lifetime_s`` bounds how long before it finished a job was created (the
    queue and reply deadlines), so the recent-throughput query reads a range of the
    (state, created_at) index instead of every job the farm ever ran."""
    stamp = time.time()
    since = stamp - window_s
    recent: dict[str, int] = {}
    replies = 0
    for worker_id, tokens in _rows(
        db,
        Job.select(Job.worker_id, Message.completion_tokens)
        .join(Message)
        .where(
            (Job.state == JobState.SUCCEEDED)
            & (Job.created_at >= since - job_lifetime_s - 60)  # a sweep's slack
            & (Job.finished_at >= since)
        ),
    ):
        recent[str(worker_id)] = recent.get(str(worker_id), 0) + int(tokens or 0)
        replies += 1
    held = active_counts(db)
    rows = Worker.select().where(
        Worker.revoked_at.is_null()
        & Worker.state.in_(("online", "draining", "unavailable"))
        & (Worker.last_seen >= stamp - grace_s)
    )
    workers = [
        FarmWorker(
            name=w.name,
            models=[display_model(m) for m in json.loads(w.models)],
            state=(w.state if w.state != "online" else ("busy" if held.get(w.id, 0) else "idle")),
            jobs_running=held.get(w.id, 0),
            capacity=w.capacity,
            replies_served=w.jobs_succeeded,
            chars_served=w.chars_generated,
            recent_tokens_per_s=round(recent.get(w.id, 0) / window_s, 1),
            simulated=w.simulated,
        )
        for w in rows.order_by(Worker.name).execute(db)
    ]
    return FarmView(
        workers=workers,
        queue_depth=Job.select().where(Job.state == JobState.QUEUED).count(db),
        replies_last_minute=replies,
        tokens_per_s_last_minute=round(sum(recent.values()) / window_s, 1),
    )
