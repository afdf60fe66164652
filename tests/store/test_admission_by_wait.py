"""The model's queue bound is checked in the request's own transaction, against the jobs
queued for that model at that moment (other models' queues do not count), and so is
whether an online worker serves the model at all. On SQLite and PostgreSQL."""

import time

import peewee as pw
import pytest

from coordinator.chat.stores import ChatStores
from coordinator.db.tables import Worker
from coordinator.errors import Busy
from coordinator.jobs.capacity import AdmitLimit
from coordinator.keys.api_keys import ApiKeyStore
from tests.support.stores import add_worker, asking


def test_a_full_models_queue_refuses_and_the_others_do_not(db: pw.Database) -> None:
    add_worker("w", models=("llama3:latest", "mistral:latest"))
    chat = ChatStores.open(db)
    key, _ = ApiKeyStore(db).create("batch", max_concurrent=100)
    three = AdmitLimit("llama3", most_queued=3, seconds_per_start=5.0)
    for _ in range(3):
        chat.requests.start_api_conversation(key, "llama3", asking([("user", "hi")]), limit=three)
    with pytest.raises(Busy) as refused:
        chat.requests.start_api_conversation(key, "llama3", asking([("user", "hi")]), limit=three)
    assert refused.value.retry_after_s == 5
    # another model's queue is its own
    other = AdmitLimit("mistral", most_queued=1, seconds_per_start=5.0)
    chat.requests.start_api_conversation(key, "mistral", asking([("user", "hi")]), limit=other)
    # a chat message and a retry are held to the same bound
    user = chat.identity.session_user("u" * 40)
    thread = chat.threads.create_thread(user.user_id, "")
    with pytest.raises(Busy):
        chat.requests.send_message(user.user_id, thread.thread_id, "hi", "llama3", limit=three)


def test_a_model_no_online_worker_serves_is_refused(db: pw.Database) -> None:
    chat = ChatStores.open(db, grace_s=10)
    key, _ = ApiKeyStore(db).create("batch", max_concurrent=100)
    unbounded = AdmitLimit("llama3", most_queued=None, seconds_per_start=5.0)
    with pytest.raises(Busy) as refused:
        chat.requests.start_api_conversation(
            key, "llama3", asking([("user", "hi")]), limit=unbounded
        )
    assert (str(refused.value), refused.value.reason) == (
        "no worker serves llama3 right now",
        "no_worker",
    )
    add_worker("w")
    chat.requests.start_api_conversation(key, "llama3", asking([("user", "hi")]), limit=unbounded)
    # silent past the grace period, or quarantined: not online
    Worker.update(last_seen=time.time() - 11).execute()
    with pytest.raises(Busy):
        chat.requests.start_api_conversation(
            key, "llama3", asking([("user", "hi")]), limit=unbounded
        )
    Worker.update(last_seen=time.time(), quarantined_until=time.time() + 60).execute()
    with pytest.raises(Busy):
        chat.requests.start_api_conversation(
            key, "llama3", asking([("user", "hi")]), limit=unbounded
        )
