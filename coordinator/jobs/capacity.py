"""Admission by expected wait: how many requests for a model the queue may hold, so that
every one it takes starts before its queue deadline.

By Little's law a queue of N requests in front of a fleet that starts one every ``s``
seconds empties in N * s. The fleet starts a model's jobs at ``slots / service_s`` a
second: ``slots`` are the job slots of the online workers serving that model, and
``service_s`` is how long its jobs have held a slot lately (from the database, over every
coordinator's jobs; a default before any has finished). So a new request can start
within the horizon (a fraction of the queue deadline, for the estimate's error) while
fewer than ``free + slots * horizon / service_s`` of the model's requests are queued. One
more is refused at once, told when the queue will have room again, instead of waiting
minutes to time out. A model no online worker serves is refused at once too (checked in
the request's transaction, against the workers' rows).

The dispatcher feeds it the fleet after its rounds and the service times every few
seconds; the request path asks it for a limit, and the store checks the queue against the
limit inside the request's own transaction (the count is exact at that moment).
"""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from coordinator.errors import Busy
from coordinator.workers.presence import WorkerLoad
from farm_protocol.models import display_model, normalize_model

RETRY_MAX_S = 60.0  # a refusal never asks for more patience than this


@dataclass(frozen=True, slots=True)
class AdmitLimit:
    """A request for ``model`` needs an online worker serving it, and fewer than
    ``most_queued`` of the model's requests waiting (None: no bound known yet); the fleet
    starts one every ``seconds_per_start``."""

    model: str  # as requests store it (display form)
    most_queued: int | None
    seconds_per_start: float

    def check(self, queued: int) -> None:
        """Raise :class:`Busy` if ``queued`` requests already wait for the model."""
        if self.most_queued is None or queued < self.most_queued:
            return
        wait = (queued + 1 - self.most_queued) * self.seconds_per_start
        retry = min(RETRY_MAX_S, max(1, math.ceil(wait)))
        raise Busy(f"the farm is busy: try again in about {retry} s", retry, "queue_full")


def no_worker(model: str) -> Busy:
    return Busy(f"no worker serves {model} right now", 30, "no_worker")


@dataclass(frozen=True, slots=True)
class _Fleet:
    slots: int
    free: int


class FleetCapacity:
    def __init__(
        self, queue_timeout_s: float, reply_estimate_s: float, admit_fraction: float = 0.75
    ) -> None:
        self.horizon_s = queue_timeout_s * admit_fraction
        self.reply_estimate_s = reply_estimate_s
        self._fleet: dict[str, _Fleet] = {}
        self._service_s: dict[str, float] = {}

    def observe_fleet(self, workers: Iterable[WorkerLoad]) -> None:
        """The workers that may get a job now (:meth:`WorkerPresence.online`)."""
        slots: dict[str, int] = {}
        free: dict[str, int] = {}
        for worker in workers:
            for model in worker.models:
                slots[model] = slots.get(model, 0) + worker.capacity
                free[model] = free.get(model, 0) + max(worker.capacity - worker.active, 0)
        self._fleet = {m: _Fleet(slots[m], free[m]) for m in slots}

    def observe_service_times(self, seconds: Mapping[str, float]) -> None:
        """How long each (normalised) model's jobs held a slot lately, on average."""
        self._service_s = {m: s for m, s in seconds.items() if s > 0}

    def service_s(self, model: str) -> float:
        """The model's recent service time; else the fleet's average; else the default."""
        found = self._service_s.get(normalize_model(model))
        if found is not None:
            return found
        if self._service_s:
            return sum(self._service_s.values()) / len(self._service_s)
        return self.reply_estimate_s

    def limit(self, model: str) -> AdmitLimit:
        """How many of ``model``'s requests may wait. Whether an online worker serves it
        is checked in the request's own transaction (the snapshot here is up to half a
        second old); a model the snapshot has no slots for gets no bound meanwhile."""
        name = normalize_model(model)
        fleet = self._fleet.get(name)
        if fleet is None or fleet.slots == 0:
            return AdmitLimit(display_model(name), None, self.service_s(model))
        per_start = self.service_s(model) / fleet.slots
        most = fleet.free + math.floor(self.horizon_s / per_start)
        return AdmitLimit(display_model(name), max(most, 1), per_start)
