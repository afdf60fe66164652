"""Whole dispatch rounds racing over thousands of jobs on one database (threads, and two
coordinator processes on PostgreSQL): no job is claimed twice, no worker
gets more jobs than its slots. On SQLite, and on PostgreSQL when FARM_TEST_POSTGRES_URL
is set."""

import json
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import peewee as pw
import pytest

from coordinator.chat.stores import ChatStores
from coordinator.db.tables import Job, Message, User
from coordinator.jobs.dispatch import Dispatcher
from coordinator.jobs.records import Pick
from coordinator.jobs.stores import JobStores
from coordinator.mqtt.bus import Bus
from coordinator.workers.presence import WorkerPresence
from farm_protocol.payloads import JobAssignment
from farm_runtime.outbox import Outbox
from tests.support.stores import add_worker


def bulk_queue(db: pw.Database, count: int, model: str = "llama3") -> None:
    """``count`` queued replies (and their jobs) in one thread, inserted in bulk, each
    asked by a user of its own (a chat user's replies run one at a time)."""
    chat = ChatStores.open(db)
    user = chat.identity.session_user(uuid.uuid4().hex * 2)
    thread = chat.threads.create_thread(user.user_id, "")
    stamp = time.time()
    askers = [{"id": uuid.uuid4().hex, "name": f"asker {i}"} for i in range(count)]
    messages, jobs = [], []
    for i in range(count):
        message_id, job_id, question_id = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
        messages.append(
            {
                "id": question_id,
                "thread": thread.thread_id,
                "user": user.user_id,
                "parent_id": None,  # (insert_many takes its columns from the first row)
                "role": "user",
                "author": user.name,
                "content": f"question {i}",
                "state": "done",
                "created_at": stamp + i * 1e-3 - 5e-4,
                "updated_at": stamp,
            }
        )
        messages.append(
            {
                "id": message_id,
                "thread": thread.thread_id,
                "user": user.user_id,
                "parent_id": question_id,
                "role": "assistant",
                "author": model,
                "state": "queued",
                "model": model,
                "job_id": job_id,
                "created_at": stamp + i * 1e-3,
                "updated_at": stamp,
            }
        )
        jobs.append(
            {
                "id": job_id,
                "message": message_id,
                "user": askers[i]["id"],
                "model": model,
                "state": "queued",
                "created_at": stamp + i * 1e-3,
            }
        )
    with db.atomic():
        for start in range(0, count, 500):
            User.insert_many(askers[start : start + 500]).execute()
            Message.insert_many(messages[2 * start : 2 * start + 1000]).execute()
            Job.insert_many(jobs[start : start + 500]).execute()


def add_workers(count: int, capacity: int) -> None:
    for i in range(count):
        add_worker(f"w{i}", capacity)


def race(db: pw.Database, dispatchers: int) -> list[tuple[str, JobAssignment]]:
    """Each dispatcher runs rounds until the queue is empty or the fleet is full."""
    store = JobStores.open(db, context_messages=5, max_attempts=3)
    workers = WorkerPresence(db, grace_s=7200)
    barrier = threading.Barrier(dispatchers)
    claims: list[list[tuple[str, JobAssignment]]] = [[] for _ in range(dispatchers)]

    def run(index: int) -> None:
        dispatcher = Dispatcher(None, store.queue, workers, Bus(Outbox()), publish_replies=False)  # type: ignore[arg-type]
        with db.connection_context():
            barrier.wait()
            idle = 0
            while idle < 3:
                got = dispatcher._round().assigned
                claims[index].extend(got)
                idle = 0 if got else idle + 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(dispatchers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [c for per in claims for c in per]


def test_racing_dispatch_rounds_claim_each_job_once(db: pw.Database) -> None:
    jobs_n = 3000
    bulk_queue(db, jobs_n)
    add_workers(6, capacity=500)
    claims = race(db, dispatchers=4)
    ids = [a.job_id for _, a in claims]
    assert len(ids) == jobs_n
    assert len(set(ids)) == jobs_n
    assert {a.attempt for _, a in claims} == {1}
    held = {j.id: j.worker_id for j in Job.select(Job.id, Job.worker_id)}
    assert all(held[a.job_id] == worker for worker, a in claims)
    assert max(Counter(held.values()).values()) <= 500
    assert Job.select().where(Job.state == "queued").count() == 0


def test_racing_dispatch_rounds_never_overfill_a_worker(db: pw.Database) -> None:
    bulk_queue(db, 400)
    add_workers(2, capacity=7)
    claims = race(db, dispatchers=4)
    assert len(claims) == 14
    per_worker = Counter(worker for worker, _ in claims)
    assert per_worker == {"w0": 7, "w1": 7}
    assert Job.select().where(Job.state == "assigned").count() == 14


def test_two_coordinator_processes_share_one_database(
    db: pw.Database, db_url: str, tmp_path: Path
) -> None:
    """Two OS processes, each a coordinator's dispatch loop, over 3000 jobs."""
    if isinstance(db, pw.SqliteDatabase):
        pytest.skip("scaling out to several coordinators is a PostgreSQL deployment")
    jobs_n = 3000
    bulk_queue(db, jobs_n)
    add_workers(5, capacity=550)  # 2750 slots: the last 250 jobs must stay queued
    db.close()
    start_at = time.time() + 4
    outs = [tmp_path / f"claims-{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.dispatch_process",
                db_url,
                str(out),
                str(start_at),
            ],
            cwd=Path(__file__).resolve().parents[2],
        )
        for out in outs
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    claims = [tuple(c) for out in outs for c in json.loads(out.read_text())]
    per_process = [len(json.loads(out.read_text())) for out in outs]
    assert all(n > 0 for n in per_process), f"one process claimed nothing: {per_process}"
    ids = [job for _, job, _ in claims]
    assert len(ids) == len(set(ids)) == 2750
    with db.connection_context():
        held = Counter(j.worker_id for j in Job.select().where(Job.state == "assigned"))
        assert held == {f"w{i}": 550 for i in range(5)}
        assert Job.select().where(Job.state == "queued").count() == 250


def test_a_claim_counts_its_owners_running_jobs_again(db: pw.Database) -> None:
    """A round of another coordinator may have started the owner's job after this round
    read the queue: the claim itself keeps the owner within its cap (a chat user's one
    reply at a time, so that the next is asked with the one before in its context)."""
    chat = ChatStores.open(db)
    user = chat.identity.session_user("c" * 40).user_id
    thread = chat.threads.create_thread(user, "").thread_id
    first = chat.requests.send_message(user, thread, "one", "llama3")
    second = chat.requests.send_message(user, thread, "and two", "llama3")
    add_workers(1, capacity=4)
    queue = JobStores.open(db, context_messages=5, max_attempts=3).queue
    # both were startable when each round read the queue; the first round's claim landed
    assert len(queue.claim_many([Pick(first.job_id, "w0", 4, user, 1)])) == 1
    assert queue.claim_many([Pick(second.job_id, "w0", 4, user, 1)]) == []
    assert Job.get_by_id(second.job_id).state == "queued"
    # an owner with room (a cap of 2) gets it
    assert len(queue.claim_many([Pick(second.job_id, "w0", 4, user, 2)])) == 1
