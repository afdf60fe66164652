"""Dispatch throughput: full dispatch rounds (find queued jobs, pick a worker, claim
atomically, build the assignment with its chat context) per second, on SQLite and, when
FARM_TEST_POSTGRES_URL is set, on PostgreSQL, side by side in one run."""

import json
import time

import peewee as pw

from benchmarks.databases import on_each_database
from coordinator.chat.stores import ChatStores
from coordinator.db.database import migrate
from coordinator.db.tables import Job, User, Worker
from coordinator.jobs.dispatch import Dispatcher
from coordinator.jobs.stores import JobStores
from coordinator.mqtt.bus import Bus
from coordinator.workers.presence import WorkerPresence
from farm_runtime.outbox import Outbox


def _prepare(db: pw.Database, jobs: int, workers: int) -> None:
    chat = ChatStores.open(db)
    user = chat.identity.session_user("b" * 40)
    thread = chat.threads.create_thread(user.user_id, "You are a benchmark.")
    with db.atomic():
        for i in range(jobs):
            Job.update(state="succeeded").where(Job.state == "queued").execute()
            chat.requests.send_message(user.user_id, thread.thread_id, f"question {i}", "llama3")
        Job.update(state="queued").execute()
        # each asked by a user of their own: a chat user's replies run one at a time
        job_ids = [str(job.id) for job in Job.select(Job.id)]
        for i, job_id in enumerate(job_ids):
            User.insert(id=f"asker{i}", name=f"asker {i}").execute()
            Job.update(user=f"asker{i}").where(Job.id == job_id).execute()
        for w in range(workers):
            Worker.create(
                id=f"w{w}",
                name=f"w{w}",
                key_hash="x",
                capacity=jobs,
                state="online",
                last_seen=time.time() + 3600,
                models=json.dumps(["llama3:latest"]),
            )


def measure(db: pw.Database, jobs: int, workers: int) -> float:
    migrate(db)
    with db.connection_context():
        _prepare(db, jobs, workers)
        store = JobStores.open(db, context_messages=5, max_attempts=3)
        dispatcher = Dispatcher(
            None,  # type: ignore[arg-type]  # its rounds are called directly
            store.queue,
            WorkerPresence(db, grace_s=7200),
            Bus(Outbox()),
            publish_replies=False,
        )
        started = time.perf_counter()
        claimed = 0
        while claimed < jobs:
            round_ = dispatcher._round().assigned
            assert round_, "dispatch stalled"
            claimed += len(round_)
        return jobs / (time.perf_counter() - started)


def run(jobs: int = 2000, workers: int = 10) -> list[tuple[str, float]]:
    return on_each_database(lambda db: measure(db, jobs, workers))


def main() -> str:
    jobs, workers = 2000, 10
    print(f"dispatch: {jobs} queued jobs, {workers} online workers, claim + assignment per job")
    results = run(jobs, workers)
    base = results[0][1]
    lines = ["| database | jobs/s | vs SQLite |", "|---|---|---|"]
    for name, rate in results:
        print(f"  {name:<14} {rate:8.0f} jobs/s   ({rate / base:.2f}x SQLite)")
        lines.append(f"| {name} | {rate:,.0f} | {rate / base:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
