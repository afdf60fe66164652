"""Dispatch: match queued jobs to online workers, claim atomically, publish assignments."""

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import replace

from coordinator.db_runner import DbRunner
from coordinator.job_store import JobStore, Pick
from coordinator.worker_store import WorkerLoad, WorkerStore
from farm_protocol import topics
from farm_protocol.broker import Outbox
from farm_protocol.codec import encode
from farm_protocol.models import normalize_model
from farm_protocol.payloads import JobAssignment

log = logging.getLogger(__name__)


def pick_worker(
    model: str, workers: Iterable[WorkerLoad], avoid: str | None = None
) -> WorkerLoad | None:
    """The best worker for ``model``: it serves the model and has a free slot; prefer one
    with the model loaded already (no swap thrash), then the least loaded. ``avoid`` (the
    worker a previous attempt failed on) is chosen only when no other worker can take it."""
    wanted = normalize_model(model)
    candidates = [w for w in workers if wanted in w.models and w.active < w.capacity]
    return min(
        candidates,
        key=lambda w: (
            w.id == avoid,
            wanted not in w.loaded,
            w.active / max(w.capacity, 1),
            w.active,
            w.id,
        ),
        default=None,
    )


class Dispatcher:
    """Runs a dispatch round whenever kicked (a job queued, a worker free or online), and
    once a second as a safety net for changes made by another coordinator process."""

    def __init__(
        self, runner: DbRunner, jobs: JobStore, workers: WorkerStore, outbox: Outbox
    ) -> None:
        self.runner = runner
        self.jobs = jobs
        self.workers = workers
        self.outbox = outbox
        self._wake = asyncio.Event()

    def kick(self) -> None:
        self._wake.set()

    async def run(self, idle_s: float = 1.0) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=idle_s)
            self._wake.clear()
            await self.dispatch_once()

    async def dispatch_once(self) -> int:
        assigned = await self.runner.call(self._round)
        for worker_id, assignment in assigned:
            log.info(
                "job %s attempt %d -> worker %s (%s)",
                assignment.job_id,
                assignment.attempt,
                worker_id,
                assignment.model,
            )
            await self.outbox.put(
                topics.worker_assign(worker_id), encode(assignment), qos=topics.QOS_ASSIGN
            )
        return len(assigned)

    def _round(self) -> list[tuple[str, JobAssignment]]:
        """One pass over the queue, in the database thread: pick a worker for each job in
        serving order, then claim all the picks in one transaction."""
        fleet = {w.id: w for w in self.workers.online()}
        free = sum(max(w.capacity - w.active, 0) for w in fleet.values())
        if not free:
            return []
        picks: list[Pick] = []
        for job in self.jobs.queued_jobs():
            worker = pick_worker(job.model, fleet.values(), job.avoid_worker)
            if worker is None:
                continue
            picks.append(Pick(job.id, worker.id, worker.capacity))
            fleet[worker.id] = replace(worker, active=worker.active + 1)
            free -= 1
            if not free:
                break
        return self.jobs.claim_many(picks)
