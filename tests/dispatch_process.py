"""A coordinator's dispatch loop as its own process, for the two-process race test:
``python -m tests.dispatch_process DATABASE_URL OUT_FILE`` runs dispatch rounds until
the queue stays empty, then writes the (worker, job, attempt) claims it made as JSON."""

import json
import sys
import time

from coordinator.db.database import migrate, open_database
from coordinator.jobs.dispatch import Dispatcher
from coordinator.jobs.store import JobStore
from coordinator.workers.store import WorkerStore
from farm_runtime.outbox import Outbox


def main(url: str, out: str, start_at: float) -> None:
    db = open_database(url)
    migrate(db)
    store = JobStore(db, context_messages=5, max_attempts=3)
    dispatcher = Dispatcher(None, store, WorkerStore(db, grace_s=7200), Outbox())  # type: ignore[arg-type]
    claims: list[tuple[str, str, int]] = []
    with db.connection_context():
        time.sleep(max(0.0, start_at - time.time()))  # both processes start together
        idle = 0
        while idle < 5:
            got = dispatcher._round().assigned
            claims += [(worker, a.job_id, a.attempt) for worker, a in got]
            idle = 0 if got else idle + 1
    with open(out, "w") as f:
        json.dump(claims, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
