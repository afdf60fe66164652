"""Who gets the next job: round-robin between owners, retries on a different worker, and
quarantine of a worker that keeps failing. On SQLite and PostgreSQL."""

import time
from unittest import mock

import peewee as pw
import pytest

from coordinator.chat.stores import ChatStores
from coordinator.db.tables import Job, Message, Worker
from coordinator.errors import Busy, RateLimited
from coordinator.jobs.dispatch import Dispatcher, pick_worker
from coordinator.jobs.fairness import QueuedJob, fair_order, positions
from coordinator.jobs.queue import queued_in_order
from coordinator.jobs.records import Health
from coordinator.jobs.states import JobState
from coordinator.jobs.stores import JobStores
from coordinator.keys.api_keys import ApiKeyStore
from coordinator.mqtt.bus import Bus
from coordinator.workers.presence import WorkerLoad, WorkerPresence
from coordinator.workers.registry import WorkerRegistry
from farm_runtime.outbox import Outbox
from tests.support.stores import add_worker, asking


def dispatcher(store: JobStores, db: pw.Database) -> Dispatcher:
    """A dispatcher whose rounds are called directly (no runner, nothing published)."""
    presence = WorkerPresence(db, grace_s=60)
    return Dispatcher(None, store.queue, presence, Bus(Outbox()), publish_replies=False)  # type: ignore[arg-type]


def ask(chat: ChatStores, session: str, text: str) -> str:
    user = chat.identity.session_user(session * 20)
    thread = chat.threads.create_thread(user.user_id, "")
    return chat.requests.send_message(user.user_id, thread.thread_id, text, "llama3").job_id


def test_fair_order_takes_turns_between_owners() -> None:
    heavy = [QueuedJob(f"h{i}", "m", created_at=i, owner="heavy") for i in range(5)]
    light = [QueuedJob("l0", "m", created_at=3.5, owner="light")]
    late = [QueuedJob("n0", "m", created_at=9, owner="newcomer")]
    order = [j.id for j in fair_order(heavy + light + late, running={})]
    assert order == ["h0", "l0", "n0", "h1", "h2", "h3", "h4"]
    # An owner with jobs already running waits behind owners with none.
    order = [j.id for j in fair_order(heavy + light, running={"heavy": 2})]
    assert order == ["l0", "h0", "h1", "h2", "h3", "h4"]
    assert positions(fair_order(heavy + light, running={}))["l0"] == 2


def test_one_heavy_client_does_not_starve_a_chat_user(db: pw.Database) -> None:
    """An API key with six replies queued first; the chat user's one reply queued last
    still goes out in the first round with a free slot after the key's first."""
    chat = ChatStores.open(db, key_backlog=0)
    key, _ = ApiKeyStore(db).create("batch job", max_concurrent=6)
    thread = chat.threads.create_thread(key.user_id, "")
    heavy = [
        chat.requests.send_message(
            key.user_id, thread.thread_id, f"q{i}", "llama3", api_key=key
        ).job_id
        for i in range(6)
    ]
    with pytest.raises(RateLimited, match="limit"):
        chat.requests.send_message(key.user_id, thread.thread_id, "one more", "llama3", api_key=key)
    light = ask(chat, "c", "me too")
    add_worker("w", capacity=2)
    store = JobStores.open(db, context_messages=5, max_attempts=3)
    got = [a.job_id for _, a in dispatcher(store, db)._round().assigned]
    assert got == [heavy[0], light]
    assert positions(store.queue.queued_jobs())[heavy[1]] == 1


def test_a_key_past_its_concurrency_waits_its_turn_up_to_its_backlog(db: pw.Database) -> None:
    """A key of 2 at once with a backlog of 2 per slot: 6 requests are taken, the 7th is
    refused (429); only 2 run at once however many slots are free, and when one ends the
    next of the key's starts."""
    chat = ChatStores.open(db, key_backlog=2)
    key, _ = ApiKeyStore(db).create("bursty", max_concurrent=2)
    jobs = [
        chat.requests.start_api_conversation(key, "llama3", asking([("user", f"q{i}")])).job_id
        for i in range(6)
    ]
    with pytest.raises(RateLimited, match="2 at once, 4 more waiting"):
        chat.requests.start_api_conversation(key, "llama3", asking([("user", "q7")]))
    add_worker("w", capacity=8)
    store = JobStores.open(db, context_messages=5, max_attempts=3)
    first = [a.job_id for _, a in dispatcher(store, db)._round().assigned]
    assert first == jobs[:2]
    assert dispatcher(store, db)._round().assigned == []  # the key is at its concurrency
    store.endings.finish(jobs[0], 1, "w", JobState.SUCCEEDED)
    assert [a.job_id for _, a in dispatcher(store, db)._round().assigned] == [jobs[2]]


def test_a_full_queue_refuses_at_once(db: pw.Database) -> None:
    chat = ChatStores.open(db)
    ask(chat, "f", "first")
    user = chat.identity.session_user("g" * 40)
    thread = chat.threads.create_thread(user.user_id, "")
    with pytest.raises(Busy, match="queue is full") as refused:
        chat.requests.send_message(user.user_id, thread.thread_id, "second", "llama3", max_queued=1)
    assert refused.value.retry_after_s > 0


def test_pick_worker_prefers_loaded_then_least_loaded_and_avoids_the_failed_one() -> None:
    m = frozenset({"llama3:latest"})
    a = WorkerLoad("a", m, frozenset(), capacity=4, active=0)
    b = WorkerLoad("b", m, m, capacity=4, active=2)
    c = WorkerLoad("c", m, m, capacity=4, active=1)
    assert pick_worker("llama3", [a, b, c]) == c
    assert pick_worker("llama3", [a, b, c], avoid="c") == b
    assert pick_worker("llama3", [c], avoid="c") == c  # nobody else: the same worker
    assert pick_worker("mistral", [a, b, c]) is None


def test_a_retry_goes_to_a_different_worker(db: pw.Database) -> None:
    job_id = ask(ChatStores.open(db), "r", "retry me")
    add_worker("a", loaded=("llama3:latest",))
    add_worker("b")
    store = JobStores.open(db, context_messages=5, max_attempts=3)
    first = dispatcher(store, db)._round().assigned
    assert [(w, a.attempt) for w, a in first] == [("a", 1)]  # the loaded one
    view = store.endings.fail_or_retry(job_id, 1, "a", "out of memory", retryable=True)
    assert view is not None
    assert view.state == "queued"
    second = dispatcher(store, db)._round().assigned
    assert [(w, a.attempt) for w, a in second] == [("b", 2)]


def test_a_worker_that_keeps_failing_is_quarantined_then_let_back(db: pw.Database) -> None:
    chat = ChatStores.open(db)
    add_worker("flaky", capacity=1)
    store = JobStores.open(
        db, context_messages=5, max_attempts=1, health=Health(quarantine_after=2, quarantine_s=30)
    )
    workers = WorkerPresence(db, grace_s=60)
    for n in range(2):
        job_id = ask(chat, f"q{n}", "fail")
        assert store.queue.claim(job_id, "flaky", 1) is not None
        assert store.endings.fail_or_retry(job_id, 1, "flaky", "boom", retryable=False) is not None
    flaky = Worker.get_by_id("flaky")
    assert (flaky.quarantined_until or 0) > time.time() + 25
    assert (flaky.jobs_failed, flaky.failures) == (2, 0)
    assert workers.online() == []
    assert WorkerRegistry(db, grace_s=60).get("flaky").quarantined_until is not None
    # The cool-down ends: back in dispatch, and a success resets the count.
    Worker.update(quarantined_until=time.time() - 1).execute()
    assert [w.id for w in workers.online()] == ["flaky"]
    job_id = ask(chat, "ok", "works")
    assert store.queue.claim(job_id, "flaky", 1) is not None
    assert store.endings.finish(job_id, 1, "flaky", JobState.SUCCEEDED) is not None
    flaky = Worker.get_by_id("flaky")
    assert (flaky.jobs_succeeded, flaky.failures) == (1, 0)


def test_a_job_that_fails_at_every_attempt_counts_once_against_its_worker(
    db: pw.Database,
) -> None:
    """A request that fails on the farm's only worker at each of its attempts (a prompt
    that worker's Ollama cannot run) is one failed job for that worker, not three: on its
    own it does not take the farm's only worker out. A second job failed there is."""
    chat = ChatStores.open(db)
    add_worker("only", capacity=1)
    store = JobStores.open(
        db, context_messages=5, max_attempts=3, health=Health(quarantine_after=2, quarantine_s=30)
    )
    job_id = ask(chat, "p", "poison")
    states = []
    for attempt in (1, 2, 3):
        assert store.queue.claim(job_id, "only", attempt) is not None
        store.writes.accept(job_id, attempt, "only")
        view = store.endings.fail_or_retry(
            job_id, attempt, "only", "runner crashed", retryable=True
        )
        assert view is not None
        states.append(view.state)
    assert states == ["queued", "queued", "failed"]
    only = Worker.get_by_id("only")
    assert (only.jobs_failed, only.failures, only.quarantined_until) == (1, 1, None)
    assert [w.id for w in WorkerPresence(db, grace_s=60).online()] == ["only"]
    # Another job failed there is the second in a row.
    job_id = ask(chat, "s", "second")
    assert store.queue.claim(job_id, "only", 1) is not None
    store.writes.accept(job_id, 1, "only")
    assert store.endings.fail_or_retry(job_id, 1, "only", "boom", retryable=False) is not None
    only = Worker.get_by_id("only")
    assert only.jobs_failed == 2
    assert (only.quarantined_until or 0) > time.time() + 25


def test_a_job_counts_against_each_worker_it_fails_on(db: pw.Database) -> None:
    """Counting once per worker, not once per job: a retry that fails on another worker
    counts against that one too."""
    add_worker("a", loaded=("llama3:latest",))
    add_worker("b")
    store = JobStores.open(
        db, context_messages=5, max_attempts=2, health=Health(quarantine_after=5, quarantine_s=30)
    )
    job_id = ask(ChatStores.open(db), "t", "twice")
    for attempt, worker in ((1, "a"), (2, "b")):
        assert store.queue.claim(job_id, worker, attempt) is not None
        store.writes.accept(job_id, attempt, worker)
        store.endings.fail_or_retry(job_id, attempt, worker, "boom", retryable=True)
    assert Job.get_by_id(job_id).state == "failed"
    counts = {w.id: (w.jobs_failed, w.failures) for w in Worker.select()}
    assert counts == {"a": (1, 1), "b": (1, 1)}


def test_a_reply_its_user_retries_counts_once_against_a_worker(db: pw.Database) -> None:
    """The user retrying a reply that failed on the farm's only worker (the same prompt
    again) does not add up to a quarantine: three tries are one failed reply there. Nor
    does a job that fails on a, then b, then a again count twice against a."""
    chat = ChatStores.open(db)
    add_worker("a", capacity=1)
    store = JobStores.open(
        db, context_messages=5, max_attempts=1, health=Health(quarantine_after=2, quarantine_s=30)
    )
    user = chat.identity.session_user("r" * 20)
    thread = chat.threads.create_thread(user.user_id, "")
    new = chat.requests.send_message(user.user_id, thread.thread_id, "poison", "llama3")
    job_id = new.job_id
    for _try in range(3):
        assert store.queue.claim(job_id, "a", 1) is not None
        store.writes.accept(job_id, 1, "a")
        assert (
            store.endings.fail_or_retry(job_id, 1, "a", "runner crashed", retryable=True)
            is not None
        )
        chat.requests.retry_reply(user.user_id, thread.thread_id, new.reply.message_id)
        job_id = str(Message.get_by_id(new.reply.message_id).job_id)
    a = Worker.get_by_id("a")
    assert (a.jobs_failed, a.failures, a.quarantined_until) == (1, 1, None)

    add_worker("b")
    store.endings.max_attempts = 3
    for attempt, worker in ((1, "a"), (2, "b"), (3, "a")):
        assert store.queue.claim(job_id, worker, attempt) is not None
        store.writes.accept(job_id, attempt, worker)
        store.endings.fail_or_retry(job_id, attempt, worker, "boom", retryable=True)
    counts = {w.id: (w.jobs_failed, w.failures) for w in Worker.select()}
    assert counts == {"a": (1, 1), "b": (1, 1)}
    assert Worker.get_by_id("a").quarantined_until is None


def test_a_refusal_before_accepting_is_not_held_against_the_worker(db: pw.Database) -> None:
    """A worker that says "at capacity" to an assignment (the coordinator's view of its
    slots was stale, e.g. after a network cut) has not failed a job."""
    add_worker("busy", capacity=1)
    store = JobStores.open(
        db, context_messages=5, max_attempts=3, health=Health(quarantine_after=1, quarantine_s=30)
    )
    job_id = ask(ChatStores.open(db), "b", "refused")
    assert store.queue.claim(job_id, "busy", 1) is not None
    store.endings.fail_or_retry(job_id, 1, "busy", "the worker is at capacity", retryable=True)
    busy = Worker.get_by_id("busy")
    assert (busy.failures, busy.quarantined_until) == (0, None)
    assert Job.get_by_id(job_id).state == "queued"
    # Once it accepted the job, a failure counts.
    assert store.queue.claim(job_id, "busy", 2) is not None
    store.writes.accept(job_id, 2, "busy")
    store.endings.fail_or_retry(job_id, 2, "busy", "out of memory", retryable=True)
    assert Worker.get_by_id("busy").quarantined_until is not None


def test_a_draining_worker_is_not_blamed_for_the_jobs_it_hands_back(db: pw.Database) -> None:
    add_worker("leaving", capacity=1)
    store = JobStores.open(
        db, context_messages=5, max_attempts=3, health=Health(quarantine_after=1, quarantine_s=30)
    )
    job_id = ask(ChatStores.open(db), "d", "drain")
    assert store.queue.claim(job_id, "leaving", 1) is not None
    Worker.update(state="draining").execute()
    store.endings.fail_or_retry(job_id, 1, "leaving", "the worker is shutting down", retryable=True)
    leaving = Worker.get_by_id("leaving")
    assert leaving.quarantined_until is None
    assert Job.get_by_id(job_id).state == "queued"


def test_a_reply_with_nothing_to_answer_fails_instead_of_crashing_dispatch(
    db: pw.Database,
) -> None:
    chat = ChatStores.open(db)
    job_id = ask(chat, "z", "gone")
    # The question disappears (e.g. deleted by an operator) before dispatch.
    reply = Job.get_by_id(job_id).message
    Message.delete().where((Message.thread == reply.thread_id) & (Message.role == "user")).execute()
    add_worker("w")
    store = JobStores.open(db, context_messages=5, max_attempts=3)
    assert dispatcher(store, db)._round().assigned == []
    assert Job.get_by_id(job_id).state == "failed"


def collecting(db: pw.Database, positions_every_s: float) -> Dispatcher:
    """A dispatcher whose rounds are called directly (they collect what to publish)."""

    return Dispatcher(
        None,  # type: ignore[arg-type]
        JobStores.open(db, context_messages=5, max_attempts=3).queue,
        WorkerPresence(db, grace_s=60),
        Bus(Outbox()),
        positions_every_s=positions_every_s,
    )


def test_queue_positions_are_published_when_they_change(db: pw.Database) -> None:
    chat = ChatStores.open(db)
    jobs = [ask(chat, s, "wait") for s in "xyz"]

    d = collecting(db, positions_every_s=0)
    first = d._round()
    assert [
        (v.job_id, v.queue_position)
        for v in sorted(first.moved, key=lambda v: v.queue_position or 0)
    ] == [
        (jobs[0], 1),
        (jobs[1], 2),
        (jobs[2], 3),
    ]
    assert set(first.head_ages) == {"llama3:latest"}
    assert d._round().moved == []  # nothing moved
    add_worker("w")
    third = d._round()
    assert [a.job_id for _, a in third.assigned] == [jobs[0]]
    assert sorted((v.job_id, v.queue_position) for v in third.moved) == sorted(
        [(jobs[1], 1), (jobs[2], 2)]
    )
    snapshot = chat.threads.snapshot(Job.get_by_id(jobs[2]).message.thread_id)
    assert snapshot.messages[-1].queue_position == 2


def test_queue_positions_are_published_at_most_every_interval(db: pw.Database) -> None:
    """At saturation every dispatched job moves the whole queue up: the moves are
    published together, at most once per interval, and none is lost."""
    chat = ChatStores.open(db)
    jobs = [ask(chat, s, "wait") for s in "xyz"]

    d = collecting(db, positions_every_s=3600)
    assert len(d._round().moved) == 3  # the first publication is at once
    add_worker("w")
    moved = d._round()
    assert [a.job_id for _, a in moved.assigned] == [jobs[0]]
    assert moved.moved == []  # within the interval: held back
    d.positions_every_s = 0  # the interval is over
    assert sorted((v.job_id, v.queue_position) for v in d._round().moved) == sorted(
        [(jobs[1], 1), (jobs[2], 2)]
    )


def test_a_programmatic_request_keeps_its_whole_conversation(db: pw.Database) -> None:
    """Chat threads send the last 5 messages as context; an API request sent its whole
    conversation and gets it all (up to 200 turns)."""
    chat = ChatStores.open(db)
    key, _ = ApiKeyStore(db).create("bot", max_concurrent=1)
    turns = [("system", "be brief")]
    turns += [("user" if i % 2 == 0 else "assistant", f"turn {i}") for i in range(9)]
    new = chat.requests.start_api_conversation(key, "llama3", asking(turns))
    add_worker("w")
    store = JobStores.open(db, context_messages=5, max_attempts=3)
    assignment = store.queue.claim(new.job_id, "w", 1)
    assert assignment is not None
    assert [(t.role, t.content) for t in assignment.messages] == turns
    with pytest.raises(ValueError, match="end with a user or tool message"):
        chat.requests.start_api_conversation(
            key, "llama3", asking([("user", "q"), ("assistant", "a")])
        )


def test_a_round_on_an_empty_queue_reads_the_queue_and_nothing_more(db: pw.Database) -> None:
    """The round after each job ends usually finds nothing queued: it reads the queue,
    and does not go on to count every owner's running jobs to order nothing."""
    with mock.patch.object(db, "execute_sql", wraps=db.execute_sql) as spy:
        assert queued_in_order(db, lock=True) == []
    statements = [str(c.args[0]) for c in spy.call_args_list]
    assert len(statements) == 1, statements
    assert "GROUP BY" not in statements[0]
