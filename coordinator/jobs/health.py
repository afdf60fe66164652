"""The workers' health as their jobs end: credit for a reply, blame for a failure, and
quarantine for a worker that keeps failing."""

import logging

import peewee as pw

from coordinator.db import sql
from coordinator.jobs import statements as q
from coordinator.jobs.records import Health

log = logging.getLogger(__name__)


class WorkerHealth:
    def __init__(self, db: pw.Database, policy: Health) -> None:
        self.db = db
        self.policy = policy

    def credit(self, worker_id: str, chars: int) -> None:
        sql.execute(self.db, q.CREDIT, (chars, worker_id))

    def blame(self, worker_id: str, stamp: float, message_id: str) -> None:
        """Count a job the worker failed. While online, enough failed jobs in a row
        quarantine it: no new jobs until the cool-down is over. (A worker that is
        draining or gone fails its jobs on purpose and is not blamed.)

        A reply counts once against a worker, however many of its attempts fail there,
        and however often its user retries it (``reply_failure``): a request that fails on
        the farm's only worker every time says as much about the request as about the
        worker, and must not take that worker out of the farm on its own."""
        counted = sql.execute(self.db, q.FIRST_FAILURE_HERE, (message_id, worker_id, stamp))
        if counted.rowcount != 1:
            return
        sql.execute(self.db, q.COUNT_FAILED, (worker_id,))
        sql.execute(self.db, q.FAILED_IN_A_ROW, (worker_id,))
        until = stamp + self.policy.quarantine_s
        quarantined = sql.execute(
            self.db, q.QUARANTINE, (until, worker_id, self.policy.quarantine_after)
        ).rowcount
        if quarantined:
            log.warning(
                "worker %s quarantined for %.0f s after %d failed jobs in a row",
                worker_id,
                self.policy.quarantine_s,
                self.policy.quarantine_after,
            )
