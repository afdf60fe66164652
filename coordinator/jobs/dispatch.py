"""Dispatch: match queued jobs to online workers, claim atomically, publish assignments."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from coordinator.db.runner import DbRunner
from coordinator.jobs.admission import Admission
from coordinator.jobs.capacity import FleetCapacity
from coordinator.jobs.fairness import QueuedJob, positions
from coordinator.jobs.queue import JobQueue
from coordinator.jobs.records import Pick
from coordinator.mqtt.bus import Bus
from coordinator.workers.presence import WorkerLoad, WorkerPresence
from farm_protocol.chat import MessageView
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


@dataclass(slots=True)
class Round:
    """What one dispatch round did, and what it saw of the queue afterwards."""

    assigned: list[tuple[str, JobAssignment]] = field(default_factory=list)
    head_ages: dict[str, float] = field(default_factory=dict)  # oldest queued, per model
    moved: list[MessageView] = field(default_factory=list)  # replies whose place changed
    held: list[MessageView] = field(default_factory=list)  # replies now held by a worker


class Dispatcher:
    """Runs a dispatch round whenever woken (a job queued, a worker free or online), and
    once a second as a safety net for changes made by another coordinator process.

    After each round it tells the admission control how old each model's queue head is,
    and, at most every ``positions_every_s``, publishes the new queue position of every
    reply (of the first ``POSITIONS_PUBLISHED``) whose place changed. (At saturation every
    job leaving the queue moves all the others up: publishing each move cost a hundred
    messages per dispatched job, more than the job's own.)"""

    POSITIONS_PUBLISHED = 100
    FLEET_EVERY_S = 0.5
    SERVICE_EVERY_S = 1.0
    SERVICE_WINDOW_S = 600.0  # service times are averaged over the jobs that ended in this

    def __init__(
        self,
        runner: DbRunner,
        queue: JobQueue,
        workers: WorkerPresence,
        bus: Bus,
        admission: Admission | None = None,
        *,
        capacity: FleetCapacity | None = None,
        publish_replies: bool = True,
        positions_every_s: float = 1.0,
    ) -> None:
        self.runner = runner
        self.capacity = capacity
        self._fleet_seen_at = -float("inf")  # time.monotonic() of the last observations
        self._service_seen_at = -float("inf")
        self.queue = queue
        self.workers = workers
        self.bus = bus
        self.admission = admission
        # whether a round looks up the replies it moved, to publish them (the chat's
        # browsers show the worker and the queue position)
        self.publish_replies = publish_replies
        self._wake = asyncio.Event()
        self._positions: dict[str, int] = {}
        self.positions_every_s = positions_every_s
        self._positions_at = -float("inf")  # time.monotonic() of the last publication
        self.on_assigned: Callable[[float], None] = lambda waited_s: None

    def wake(self) -> None:
        """Run a round soon: a job was queued or ended."""
        self._wake.set()

    def fleet_changed(self) -> None:
        """A worker came, went or changed: run a round soon, and show admission control
        the fleet after it (not at the next interval)."""
        self._fleet_seen_at = -float("inf")
        self._wake.set()

    async def run(self, idle_s: float = 1.0) -> None:
        while True:
            # asyncio.timeout, not wait_for: see farm_runtime/queues.py (a stop that
            # landed as the wake-up came would be lost, and shutdown would hang).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle_s):
                    await self._wake.wait()
            self._wake.clear()
            await self.dispatch_once()

    async def dispatch_once(self) -> int:
        done = await self.runner.call(self._round)
        # Who holds each reply goes to the webapps before the assignment goes to the
        # worker: a webapp forwards only the holder's chunks, and the first one follows
        # the assignment within milliseconds.
        for view in done.held:
            await self.bus.message(view)
        for worker_id, assignment in done.assigned:
            log.info(
                "job %s attempt %d -> worker %s (%s)",
                assignment.job_id,
                assignment.attempt,
                worker_id,
                assignment.model,
            )
            await self.bus.assign(worker_id, assignment)
        if self.admission is not None:
            self.admission.observe(done.head_ages)
        for view in done.moved:
            await self.bus.message(view)
        return len(done.assigned)

    def _round(self) -> Round:
        """One pass over the queue, in the database thread: pick a worker for each job in
        serving order, claim all the picks in one transaction, then look at what is left."""
        done = Round()
        with self.queue.transaction():
            queued = self.queue.queued_jobs(lock=True)
            if queued:
                done.assigned = self._assign(queued)
        stamp = time.time()
        taken = {a.job_id for _, a in done.assigned}
        left = [job for job in queued if job.id not in taken]
        for job in left:
            model = normalize_model(job.model)
            done.head_ages[model] = max(done.head_ages.get(model, 0.0), stamp - job.created_at)
        for job in queued:
            if job.id in taken:
                self.on_assigned(stamp - job.created_at)
        self._observe_capacity(stamp)
        if not self.publish_replies:
            return done
        done.held = self.queue.holder_views(done.assigned)
        if time.monotonic() - self._positions_at >= self.positions_every_s:
            now_at = positions(left[: self.POSITIONS_PUBLISHED])
            changed = {j: p for j, p in now_at.items() if self._positions.get(j) != p}
            if changed:
                done.moved = self.queue.queued_views(changed)
                self._positions, self._positions_at = now_at, time.monotonic()
        return done

    def _observe_capacity(self, stamp: float) -> None:
        """Tell admission control what the fleet can start (after this round's claims),
        at most every ``FLEET_EVERY_S``, and how long jobs take, every ``SERVICE_EVERY_S``."""
        if self.capacity is None:
            return
        now = time.monotonic()
        if now - self._fleet_seen_at >= self.FLEET_EVERY_S:
            self.capacity.observe_fleet(self.workers.online())
            self._fleet_seen_at = now
        if now - self._service_seen_at >= self.SERVICE_EVERY_S:
            times = self.queue.service_times(stamp - self.SERVICE_WINDOW_S)
            self.capacity.observe_service_times({normalize_model(m): t for m, t in times.items()})
            self._service_seen_at = now

    def _assign(self, queued: list[QueuedJob]) -> list[tuple[str, JobAssignment]]:
        fleet = {w.id: w for w in self.workers.online()}
        free = sum(max(w.capacity - w.active, 0) for w in fleet.values())
        picks: list[Pick] = []
        for job in queued:
            if not free:
                break
            worker = pick_worker(job.model, fleet.values(), job.avoid_worker)
            if worker is None:
                continue
            picks.append(Pick(job.id, worker.id, worker.capacity, job.owner, job.cap))
            fleet[worker.id] = replace(worker, active=worker.active + 1)
            free -= 1
        return self.queue.claim_many(picks)
