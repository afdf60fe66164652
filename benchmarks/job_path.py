"""The coordinator's database work for one short job's whole life, as its database thread
does it: store an API request (thread, messages, job), a dispatch round that claims it,
the worker's *accepted*, the first text, a checkpoint (which repeats the first one's
chunk, as checkpoints overlap), and the finish with the rest of the text.
Statements and time per job, on SQLite and, when FARM_TEST_POSTGRES_URL is set, on
PostgreSQL, in one run. No broker and no event loop: this is the database thread's own
cost, the part of the throughput benchmark's coordinator CPU that a job's life adds."""

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import peewee as pw

from benchmarks.databases import on_each_database
from coordinator.chat.stores import ChatStores
from coordinator.db.database import migrate
from coordinator.db.tables import Worker
from coordinator.jobs.dispatch import Dispatcher
from coordinator.jobs.records import TextAppend
from coordinator.jobs.states import JobState
from coordinator.jobs.stores import JobStores
from coordinator.keys.api_keys import ApiKeyStore
from coordinator.mqtt.bus import Bus
from coordinator.workers.presence import WorkerPresence
from farm_runtime.outbox import Outbox
from tests.support.stores import asking

STEPS = ("store request", "dispatch round", "accepted", "first text", "checkpoint", "finish")


@contextmanager
def counting(db: pw.Database) -> Iterator[list[int]]:
    """Count the statements ``db`` runs (BEGIN and COMMIT included) while inside."""
    count = [0]
    original = db.execute_sql

    def execute_sql(sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return original(sql, params, *args, **kwargs)  # type: ignore[no-untyped-call]

    db.execute_sql = execute_sql  # type: ignore[method-assign]
    begin, commit = db.begin, db.commit

    def counted(fn: Callable[[], Any]) -> Callable[[], Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            return fn(*args, **kwargs)

        return call

    db.begin, db.commit = counted(begin), counted(commit)  # type: ignore[method-assign]
    try:
        yield count
    finally:
        del db.execute_sql, db.begin, db.commit


def measure(db: pw.Database, jobs: int, workers: int = 10) -> dict[str, tuple[float, float]]:
    """{step: (statements per job, microseconds per job)}."""
    migrate(db)
    with db.connection_context():
        key, _ = ApiKeyStore(db).create("bench", max_concurrent=1000)
        for w in range(workers):
            Worker.create(
                id=f"w{w}",
                name=f"w{w}",
                key_hash="x",
                capacity=4,
                state="online",
                last_seen=time.time() + 3600,
                models=json.dumps(["llama3:latest"]),
            )
        chat = ChatStores.open(db)
        store = JobStores.open(db, context_messages=20, max_attempts=3)
        dispatcher = Dispatcher(
            None,  # type: ignore[arg-type]  # rounds are called directly
            store.queue,
            WorkerPresence(db, grace_s=7200),
            Bus(Outbox()),
        )
        totals = {name: [0, 0.0] for name in STEPS}

        @contextmanager
        def step(name: str) -> Iterator[None]:
            with counting(db) as count:
                started = time.perf_counter()
                yield
                totals[name][1] += time.perf_counter() - started
            totals[name][0] += count[0]

        for i in range(jobs):
            with step("store request"):
                new = chat.requests.start_api_conversation(
                    key, "llama3", asking([("user", f"question {i}")]), max_queued=1000
                )
            with step("dispatch round"):
                ((worker, assignment),) = dispatcher._round().assigned
            job_id, attempt = assignment.job_id, assignment.attempt
            reply = new.reply.message_id
            first = TextAppend(job_id, attempt, worker, reply, "Hello", 0, 1)
            # the next checkpoint repeats the first one's chunk, and continues from it
            overlap = TextAppend(job_id, attempt, worker, reply, "Hello,", 1, 2, (0, 5), 0)
            rest = TextAppend(job_id, attempt, worker, reply, ", world", 2, 3, (0, 1), 1)
            with step("accepted"):
                store.writes.active_job(job_id)
                store.writes.accept(job_id, attempt, worker)
            with step("first text"):
                store.writes.append_text([first])
            with step("checkpoint"):
                store.writes.append_text([overlap])
            with step("finish"):
                store.endings.finish(job_id, attempt, worker, JobState.SUCCEEDED, None, rest)
    return {name: (n / jobs, seconds / jobs * 1e6) for name, (n, seconds) in totals.items()}


def run(jobs: int = 2000) -> list[tuple[str, dict[str, tuple[float, float]]]]:
    return on_each_database(lambda db: measure(db, jobs))


def main() -> str:
    lines = [
        "| database | " + " | ".join(STEPS) + " | whole job | jobs/s on one thread |",
        "|---|" + "---|" * (len(STEPS) + 2),
    ]
    for name, steps in run():
        statements = sum(n for n, _ in steps.values())
        micros = sum(us for _, us in steps.values())
        cells = [f"{n:.0f} / {us:,.0f} µs" for n, us in steps.values()]
        lines.append(
            f"| {name} | {' | '.join(cells)} | {statements:.0f} / {micros:,.0f} µs "
            f"| {1e6 / micros:,.0f} |"
        )
    table = "\n".join(lines)
    print("\nThe database work of one short job (statements / time per job)")
    print(table)
    return table


if __name__ == "__main__":
    main()
