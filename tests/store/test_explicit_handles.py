"""Every store queries the database it was built on, never the one peewee's proxy happens
to be bound to: here the proxy is bound to another, empty database, and every store
operation still finds and changes the right rows (a benchmark that opened a second handle
to the farm's SQLite file used to deadlock on its own write lock, one store call going
through the proxy and the next through the handle). On SQLite and PostgreSQL."""

import time
from collections.abc import Iterator
from pathlib import Path

import peewee as pw
import pytest

from coordinator.chat.stores import ChatStores
from coordinator.db.database import bind, migrate, open_database
from coordinator.db.tables import User
from coordinator.jobs import reports
from coordinator.jobs.capacity import AdmitLimit
from coordinator.jobs.states import JobState
from coordinator.jobs.stores import JobStores
from coordinator.keys.api_keys import ApiKeyStore
from coordinator.workers.presence import WorkerPresence
from coordinator.workers.registry import WorkerRegistry
from farm_protocol.payloads import Heartbeat, WorkerStatus


@pytest.fixture
def elsewhere(db: pw.Database, tmp_path: Path) -> Iterator[pw.Database]:
    """Another database, empty, that the tables' proxy is bound to meanwhile."""
    other = open_database(f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}")
    migrate(other)
    try:
        yield other
    finally:
        other.close()
        bind(db)


def test_every_store_works_on_its_own_database(db: pw.Database, elsewhere: pw.Database) -> None:
    registry, presence = WorkerRegistry(db, grace_s=10), WorkerPresence(db, grace_s=10)
    info, key = registry.add("laptop")
    assert registry.check_key(info.id, key)
    key = registry.rotate(info.id)
    status = WorkerStatus(
        worker_id=info.id, session_id="s", state="online", models=["llama3"], at=time.time()
    )
    assert presence.record_status(status)
    beat = Heartbeat(worker_id=info.id, session_id="s", seq=1, at=time.time())
    assert presence.record_heartbeats([beat]) == [beat]
    assert presence.fleet_models(["llama3"]).workers_online == 1
    assert [w.id for w in presence.online()] == [info.id]
    assert [w.id for w in registry.list_workers()] == [info.id]
    assert registry.broker_passwords() == {info.id: None}

    chat = ChatStores.open(db)
    user = chat.identity.session_user("s" * 40)
    renamed, _ = chat.identity.rename(user.user_id)
    thread = chat.threads.create_thread(user.user_id, "be brief")
    assert [t.thread_id for t in chat.threads.list_threads(user.user_id)] == [thread.thread_id]
    limit = AdmitLimit("llama3", None, 1.0)
    sent = chat.requests.send_message(user.user_id, thread.thread_id, "hi", "llama3", limit=limit)
    snapshot = chat.threads.snapshot(thread.thread_id, user.user_id)
    assert [m.role for m in snapshot.messages] == ["system", "user", "assistant"]
    assert [m.name for m in snapshot.members] == [renamed.name]
    assert chat.requests.reply_model(thread.thread_id, sent.reply.message_id) == "llama3"
    assert chat.requests.job_to_stop(user.user_id, thread.thread_id, sent.reply.message_id)
    other = chat.identity.session_user("o" * 40)
    assert len(chat.threads.join(thread.thread_id, other.user_id)) == 2
    assert len(chat.threads.leave(thread.thread_id, other.user_id)) == 1

    jobs = JobStores.open(db, context_messages=5, max_attempts=3)
    assert jobs.queue.claim(sent.job_id, info.id, 1) is not None
    assert jobs.endings.fail_or_retry(sent.job_id, 1, info.id, "boom", retryable=False)
    retried = chat.requests.retry_reply(user.user_id, thread.thread_id, sent.reply.message_id)
    assert retried.state == "queued"
    assert reports.queue_stats(db, 10).queued == 1

    keys = ApiKeyStore(db)
    api, secret = keys.create("bot")
    assert keys.check(secret) is not None
    assert [k.id for k in keys.list_keys()] == [api.id]
    keys.revoke(api.id)
    assert keys.get(api.id).revoked_at is not None
    registry.revoke(info.id)
    assert registry.get(info.id).revoked_at is not None

    # nothing of it reached the database the proxy is bound to
    assert User.select().count(elsewhere) == 0
    ended = reports.job(db, sent.job_id)
    assert ended is not None
    assert JobState(ended.state) is JobState.FAILED
