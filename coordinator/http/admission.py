"""Whether a request may be queued, before it is: the farm's load shedding, and the
model's queue bound by expected wait (coordinator.jobs.capacity)."""

from coordinator.errors import Busy
from coordinator.http.context import HttpContext
from coordinator.jobs.capacity import AdmitLimit


async def admit_limit(ctx: HttpContext, model: str) -> AdmitLimit:
    """The bound on ``model``'s queue for a request about to be queued; :class:`Busy` if
    the farm is shedding ``model``'s load. (Whether a worker serves it at all is checked
    in the request's transaction, see ``RequestStore``.)"""
    try:
        ctx.admission.check(model)
    except Busy as refused:
        ctx.metrics.shed.labels(refused.reason).inc()
        raise
    return ctx.capacity.limit(model)


def refused(ctx: HttpContext, model: str, busy: Busy) -> Busy:
    """A refusal on its way out: counted, and given a return time of its own."""
    ctx.metrics.shed.labels(busy.reason).inc()
    return ctx.capacity.spread(model, busy)
