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
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from coordinator.errors import Busy
from coordinator.workers.presence import WorkerLoad
from farm_protocol.models import display_model, normalize_model

RETRY_MAX_S = 300.0  # a refusal never asks for more patience than this
GUESS_RETRY_MAX_S = 2.0  # nor, while the service time is still a guess, than this


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
        self._promised: dict[str, float] = {}  # the last return time given, per model

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

    def spread(self, model: str, refused: Busy, *, now: float | None = None) -> Busy:
        """The refusal with a return time of its own: each refused client of a model is
        given the next free moment the fleet will have room, one start apart, so that
        they come back one by one as the queue drains instead of all at once (a burst of
        1,000 on 4 slots cost 20,000 refusals, 56 for one client, when all were told the
        same second). While the service time is still a guess, no return is promised
        further than ``GUESS_RETRY_MAX_S`` away: the estimate may be far off."""
        name = normalize_model(model)
        fleet = self._fleet.get(name)
        if refused.reason != "queue_full" or fleet is None or fleet.slots == 0:
            return refused
        clock = time.monotonic() if now is None else now
        per_start = self.service_s(model) / fleet.slots
        earliest = clock + refused.retry_after_s
        previous = self._promised.get(name)
        at = earliest if previous is None else max(earliest, previous + per_start)
        if self.guessing():
            at = min(at, clock + GUESS_RETRY_MAX_S)
        self._promised[name] = at
        retry = min(RETRY_MAX_S, max(1, math.ceil(at - clock)))
        return Busy(f"the farm is busy: try again in about {retry} s", retry, refused.reason)

    def guessing(self) -> bool:
        """No service time has been measured yet: every estimate is the default."""
        return not self._service_s

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
