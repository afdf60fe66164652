"""Deadlines and lost workers (the janitor's sweep), on SQLite and PostgreSQL (the ``db``
fixture of conftest)."""

import dataclasses
import json
import time

import peewee as pw

from coordinator.chat.requests import NewReply
from coordinator.chat.stores import ChatStores
from coordinator.db.tables import Job, Message, Worker
from coordinator.jobs.records import Deadlines, TextAppend
from coordinator.jobs.stores import JobStores

DEADLINES = Deadlines(
    accept_s=10, queue_s=120, first_token_s=60, stall_s=30, reply_s=600, worker_grace_s=10
)


def setup_job(db: pw.Database) -> tuple[JobStores, str, str]:
    chat = ChatStores.open(db)
    user = chat.identity.session_user("j" * 40)
    thread = chat.threads.create_thread(user.user_id, "")
    reply = chat.requests.send_message(user.user_id, thread.thread_id, "hi", "llama3")
    Worker.create(
        id="w",
        name="w",
        key_hash="x",
        state="online",
        last_seen=time.time(),
        models=json.dumps(["llama3:latest"]),
    )
    store = JobStores.open(db, context_messages=5, max_attempts=3)
    assert store.queue.claim(reply.job_id, "w", 1) is not None
    return store, reply.job_id, reply.reply.message_id


def another_worker(worker_id: str = "w2") -> None:
    """A second worker serving the model, heartbeating: a retry can go there."""
    Worker.create(
        id=worker_id,
        name=worker_id,
        key_hash="x",
        state="online",
        last_seen=time.time() + 100,
        models=json.dumps(["llama3:latest"]),
    )


def test_lost_worker_before_any_token_requeues(db: pw.Database) -> None:
    store, job_id, message_id = setup_job(db)
    store.writes.accept(job_id, 1, "w")
    Worker.update(last_seen=time.time() - 60).execute()
    another_worker()
    result = store.deadlines.sweep(DEADLINES)
    assert result.requeued == 1
    assert Job.get_by_id(job_id).state == "queued"
    assert Message.get_by_id(message_id).state == "queued"


def test_a_will_alone_requeues_only_jobs_that_have_not_streamed(db: pw.Database) -> None:
    """The Last Will speeds detection up; heartbeats decide for a streaming job (a broker
    restart fires every Will while the workers live on and reconnect)."""
    store, job_id, message_id = setup_job(db)
    store.writes.append_text([TextAppend(job_id, 1, "w", message_id, "partial", 0, 1)])
    Worker.update(state="offline", last_seen=time.time()).execute()
    assert store.deadlines.sweep(DEADLINES).messages == []
    assert Job.get_by_id(job_id).state == "running"
    Worker.update(state="online").execute()  # it reconnected: a new birth
    assert store.deadlines.sweep(DEADLINES).messages == []


def test_a_will_requeues_an_unstarted_job_at_once(db: pw.Database) -> None:
    store, job_id, _ = setup_job(db)
    store.writes.accept(job_id, 1, "w")
    Worker.update(state="offline", last_seen=time.time()).execute()
    assert store.deadlines.sweep(DEADLINES).requeued == 1
    assert Job.get_by_id(job_id).state == "queued"


def test_lost_worker_after_tokens_fails_with_a_reason(db: pw.Database) -> None:
    store, job_id, message_id = setup_job(db)
    store.writes.append_text([TextAppend(job_id, 1, "w", message_id, "partial", 0, 1)])
    Worker.update(state="offline", last_seen=time.time() - 60).execute()
    store.deadlines.sweep(DEADLINES)
    message = Message.get_by_id(message_id)
    assert (message.state, message.content) == ("failed", "partial")
    assert "stopped responding" in (message.error or "")


def test_unaccepted_job_returns_to_the_queue_and_worker_is_told(db: pw.Database) -> None:
    store, job_id, _ = setup_job(db)
    Worker.update(last_seen=time.time() + 100).execute()  # alive, just not answering
    result = store.deadlines.sweep(DEADLINES, now=time.time() + 11)
    assert Job.get_by_id(job_id).state == "queued"
    assert [(c.worker_id, c.job_id) for c in result.cancels] == [("w", job_id)]


def test_stall_times_out_and_sets_the_message(db: pw.Database) -> None:
    store, job_id, message_id = setup_job(db)
    store.writes.append_text([TextAppend(job_id, 1, "w", message_id, "some", 0, 1)])
    Worker.update(last_seen=time.time() + 100).execute()  # still heartbeating
    result = store.deadlines.sweep(DEADLINES, now=time.time() + 31)
    assert Job.get_by_id(job_id).state == "timed_out"
    message = Message.get_by_id(message_id)
    assert (message.state, message.content) == ("timed_out", "some")
    assert "stalled" in (message.error or "")
    assert len(result.cancels) == 1


def test_queue_deadline_times_out_unserved_jobs(db: pw.Database) -> None:
    chat = ChatStores.open(db)
    user = chat.identity.session_user("q" * 40)
    thread = chat.threads.create_thread(user.user_id, "")
    reply = chat.requests.send_message(user.user_id, thread.thread_id, "anyone?", "llama3")
    store = JobStores.open(db, context_messages=5, max_attempts=3)
    store.deadlines.sweep(DEADLINES, now=time.time() + 121)
    message = Message.get_by_id(reply.reply.message_id)
    assert message.state == "timed_out"
    assert "no worker could take" in (message.error or "")


def test_a_message_waiting_behind_its_senders_reply_is_not_late(db: pw.Database) -> None:
    """The queue deadline counts the wait for the farm: a message sent while the
    sender's reply generates waits for that reply first, however long it takes."""
    store, first_job, _ = setup_job(db)  # claimed by w
    chat = ChatStores.open(db)
    user = str(Job.get_by_id(first_job).user_id)
    thread = Message.get_by_id(Job.get_by_id(first_job).message_id).thread_id
    second = chat.requests.send_message(user, thread, "and then?", "llama3")
    later = time.time() + 300  # the first still streaming then, from a worker still there
    Job.update(state="running", accepted_at=later, first_token_at=later, last_token_at=later).where(
        Job.id == first_job
    ).execute()
    Worker.update(last_seen=later).execute()
    assert store.deadlines.sweep(DEADLINES, now=later).messages == []
    assert Job.get_by_id(second.job_id).state == "queued"
    # The reply ended a while ago: from then on the second waited for the farm.
    Job.update(state="succeeded", finished_at=time.time() + 100).where(
        Job.id == first_job
    ).execute()
    assert store.deadlines.sweep(DEADLINES, now=time.time() + 200).messages == []
    late = store.deadlines.sweep(DEADLINES, now=time.time() + 221).messages
    assert [m.message_id for m in late] == [second.reply.message_id]
    assert late[0].state == "timed_out"


def test_retries_stop_after_max_attempts(db: pw.Database) -> None:
    store, job_id, message_id = setup_job(db)
    for attempt in (1, 2, 3):
        view = store.endings.fail_or_retry(job_id, attempt, "w", "refused", retryable=True)
        assert view is not None
        if attempt < 3:
            assert view.state == "queued"
            assert store.queue.claim(job_id, "w", 1) is not None
    assert Message.get_by_id(message_id).state == "failed"


def test_lost_worker_after_tokens_can_be_configured_to_start_again(db: pw.Database) -> None:
    store, job_id, message_id = setup_job(db)
    store.writes.append_text([TextAppend(job_id, 1, "w", message_id, "partial", 0, 1)])
    Worker.update(state="offline", last_seen=time.time() - 60).execute()
    another_worker()
    again = dataclasses.replace(DEADLINES, requeue_lost_streaming=True)
    result = store.deadlines.sweep(again)
    assert result.requeued == 1
    job = Job.get_by_id(job_id)
    assert (job.state, job.chunks, job.avoid_worker_id) == ("queued", 0, "w")
    message = Message.get_by_id(message_id)
    assert (message.state, message.content, message.content_seq) == ("queued", "", -1)


def test_queued_jobs_end_promptly_when_the_last_worker_of_their_model_leaves(
    db: pw.Database,
) -> None:
    """Waiting for a worker that is not there would end only at the queue deadline (two
    minutes): the jobs end at the next sweep after their last worker left (went silent,
    or is draining), saying why. A coordinator that has just started gives the workers
    time to say they are there first."""
    store, claimed, _ = setup_job(db)  # worker w, serving llama3, holds it
    chat = ChatStores.open(db)

    def ask(who: str, model: str) -> NewReply:
        user = chat.identity.session_user(who * 40)
        thread = chat.threads.create_thread(user.user_id, "")
        return chat.requests.send_message(user.user_id, thread.thread_id, "hi", model)

    waiting, orphan = ask("k", "llama3"), ask("m", "mistral")
    Worker.update(last_seen=time.time() + 100).execute()  # w heartbeats
    assert [v.message_id for v in store.deadlines.sweep(DEADLINES).messages] == [
        orphan.reply.message_id
    ]
    ended = Message.get_by_id(orphan.reply.message_id)
    assert (ended.state, ended.error) == ("timed_out", "no worker serves mistral right now")
    assert Job.get_by_id(waiting.job_id).state == "queued"  # w serves llama3

    Worker.update(state="draining").execute()  # leaving: it takes no new jobs
    assert store.deadlines.sweep(DEADLINES, unserved=False).messages == []
    assert Job.get_by_id(waiting.job_id).state == "queued"
    store.deadlines.sweep(DEADLINES)
    message = Message.get_by_id(waiting.reply.message_id)
    assert (message.state, message.error) == ("timed_out", "no worker serves llama3 right now")
    assert Job.get_by_id(claimed).state == "assigned"  # w still finishes what it holds
