"""The job package's stores, built together on one database: each caller takes its own
slice (dispatch the queue, the streams their writes and endings, the janitor the deadline
sweep, the canceller the endings)."""

from dataclasses import dataclass

import peewee as pw

from coordinator.jobs.deadlines import DeadlineSweep
from coordinator.jobs.endings import Endings
from coordinator.jobs.health import WorkerHealth
from coordinator.jobs.queue import JobQueue
from coordinator.jobs.records import Health
from coordinator.jobs.stream_writes import StreamWrites


@dataclass(frozen=True, slots=True)
class JobStores:
    queue: JobQueue
    writes: StreamWrites
    endings: Endings
    deadlines: DeadlineSweep

    @classmethod
    def open(
        cls,
        db: pw.Database,
        *,
        context_messages: int,
        max_attempts: int,
        health: Health | None = None,
        api_context_messages: int = 200,
    ) -> "JobStores":
        endings = Endings(
            db, max_attempts=max_attempts, health=WorkerHealth(db, health or Health())
        )
        queue = JobQueue(
            db,
            endings,
            context_messages=context_messages,
            api_context_messages=api_context_messages,
        )
        return cls(queue, StreamWrites(db), endings, DeadlineSweep(db, endings))
