"""A coordinator's dispatch loop as its own process, for the two-process race test:
``python -m tests.support.dispatch_process DATABASE_URL OUT_FILE`` runs dispatch rounds until
the queue stays empty, then writes the (worker, job, attempt) claims it made as JSON."""

import json
import sys
import time

from coordinator.db.database import migrate, open_database
from coordinator.jobs.dispatch import Dispatcher
from coordinator.jobs.stores import JobStores
from coordinator.mqtt.bus import Bus
from coordinator.workers.presence import WorkerPresence
from farm_runtime.outbox import Outbox


def main(url: str, out: str, start_at: float) -> None:
    db = open_database(url)
    migrate(db)
    store = JobStores.open(db, context_messages=5, max_attempts=3)
    presence = WorkerPresence(db, grace_s=7200)
    dispatcher = Dispatcher(
        None,  # type: ignore[arg-type]  # its rounds are called directly
        store.queue,
        presence,
        Bus(Outbox()),
        publish_replies=False,
    )
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
