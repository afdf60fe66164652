"""Load shedding, CoDel-style: refuse new requests at once while a queue is standing.

A queue that drains is fine however long it gets for a moment; a queue whose oldest job
has waited longer than the target for a whole interval is standing: the farm is not
keeping up with that model, and a new request would only wait and time out. While a
model's queue stands, new requests for it are refused with "busy, try again in N s";
as soon as the oldest waiting job is younger than the target, they are taken again.

The dispatcher feeds it the age of the oldest queued job per model after every round;
the chat API asks it before queuing a request.
"""

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from coordinator.errors import Busy
from farm_protocol.models import display_model, normalize_model

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Queue:
    head_age_s: float = 0.0
    above_since: float | None = None  # when the head first stayed above the target
    shedding: bool = False


class Admission:
    def __init__(
        self,
        target_s: float,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target_s = target_s
        self.interval_s = interval_s
        self.clock = clock
        self._queues: dict[str, _Queue] = {}

    def observe(self, head_ages: Mapping[str, float]) -> None:
        """The age of the oldest job still queued, per (normalised) model."""
        now = self.clock()
        for model in list(self._queues):
            if model not in head_ages:  # drained
                self._set(model, self._queues.pop(model), shedding=False)
        for model, age in head_ages.items():
            queue = self._queues.setdefault(model, _Queue())
            queue.head_age_s = age
            if age < self.target_s:
                queue.above_since = None
                self._set(model, queue, shedding=False)
            elif queue.above_since is None:
                queue.above_since = now
            elif now - queue.above_since >= self.interval_s:
                self._set(model, queue, shedding=True)

    def _set(self, model: str, queue: _Queue, *, shedding: bool) -> None:
        if queue.shedding != shedding:
            log.warning(
                "%s requests for %s (oldest queued %.1f s, target %.1f s)",
                "shedding" if shedding else "accepting",
                model,
                queue.head_age_s,
                self.target_s,
            )
        queue.shedding = shedding

    def shedding(self) -> dict[str, float]:
        """Models being refused now, with the age of their oldest queued job."""
        return {m: q.head_age_s for m, q in self._queues.items() if q.shedding}

    def check(self, model: str) -> None:
        """Raise :class:`Busy` if requests for ``model`` are being refused."""
        queue = self._queues.get(normalize_model(model))
        if queue is None or not queue.shedding:
            return
        retry = min(60, max(1, math.ceil(queue.head_age_s - self.target_s)))
        raise Busy(
            f"the farm is busy: requests for {display_model(normalize_model(model))} are "
            f"waiting {queue.head_age_s:.0f} s; try again in {retry} s",
            retry,
            "queue_standing",
        )
