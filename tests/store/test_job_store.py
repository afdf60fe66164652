"""The job queue on a real database: atomic claims under racing dispatchers, and fencing
of late writes from an earlier attempt. Runs on SQLite, and on PostgreSQL when
FARM_TEST_POSTGRES_URL is set (CI sets it)."""

import contextlib
import threading
from dataclasses import replace
from unittest import mock

import peewee as pw

from coordinator.chat.stores import ChatStores
from coordinator.db.tables import Job, Message
from coordinator.jobs.records import Applied, TextAppend
from coordinator.jobs.states import JobState
from coordinator.jobs.stores import JobStores
from coordinator.jobs.stream_writes import StreamWrites
from tests.support.stores import add_worker


def queue_jobs(db: pw.Database, count: int) -> None:
    chat = ChatStores.open(db)
    user = chat.identity.session_user("s" * 40)
    thread = chat.threads.create_thread(user.user_id, "")
    with db.atomic():
        for i in range(count):
            db.execute_sql(  # type: ignore[no-untyped-call]
                "UPDATE job SET state = 'succeeded' WHERE state = 'queued'"
            )
            chat.requests.send_message(user.user_id, thread.thread_id, f"m{i}", "llama3")


def claimed_job(db: pw.Database) -> tuple[JobStores, str, str]:
    """A store, and one job claimed (attempt 1) by worker w: its id and its reply's."""
    queue_jobs(db, 1)
    add_worker("w", 1)
    store = JobStores.open(db, context_messages=5, max_attempts=3)
    job = store.queue.queued_jobs()[0]
    assert store.queue.claim(job.id, "w", 1) is not None
    return store, job.id, Job.get_by_id(job.id).message_id


def test_racing_dispatchers_never_double_claim(db: pw.Database) -> None:
    jobs_n, dispatchers = 400, 4
    queue_jobs(db, jobs_n)
    db.execute_sql("UPDATE job SET state = 'queued'")  # type: ignore[no-untyped-call]
    for i in range(dispatchers):
        add_worker(f"w{i}", capacity=jobs_n)
    store = JobStores.open(db, context_messages=5, max_attempts=3)
    claimed: dict[str, list[str]] = {f"w{i}": [] for i in range(dispatchers)}
    barrier = threading.Barrier(dispatchers)

    def dispatch(worker_id: str) -> None:
        with db.connection_context():
            barrier.wait()
            for job in store.queue.queued_jobs(limit=jobs_n):
                if store.queue.claim(job.id, worker_id, capacity=jobs_n):
                    claimed[worker_id].append(job.id)

    threads = [threading.Thread(target=dispatch, args=(w,)) for w in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everyone = [j for ids in claimed.values() for j in ids]
    assert len(everyone) == jobs_n
    assert len(set(everyone)) == jobs_n
    held = {j.id: j.worker_id for j in Job.select()}
    for worker_id, ids in claimed.items():
        assert all(held[j] == worker_id for j in ids)


def test_capacity_is_respected(db: pw.Database) -> None:
    queue_jobs(db, 3)
    db.execute_sql("UPDATE job SET state = 'queued'")  # type: ignore[no-untyped-call]
    add_worker("w", capacity=2)
    store = JobStores.open(db, context_messages=5, max_attempts=3)
    results = [store.queue.claim(j.id, "w", capacity=2) for j in store.queue.queued_jobs()]
    assert [r is not None for r in results] == [True, True, False]


def test_late_writes_from_an_earlier_attempt_are_fenced(db: pw.Database) -> None:
    queue_jobs(db, 1)
    add_worker("a", 1)
    add_worker("b", 1)
    store = JobStores.open(db, context_messages=5, max_attempts=3)
    job = store.queue.queued_jobs()[0]
    first = store.queue.claim(job.id, "a", 1)
    assert first is not None
    assert first.attempt == 1
    view = store.endings.fail_or_retry(job.id, 1, "a", "refused", retryable=True)
    assert view is not None
    assert view.state == "queued"
    second = store.queue.claim(job.id, "b", 1)
    assert second is not None
    assert second.attempt == 2
    message_id = Job.get_by_id(job.id).message_id
    stale = TextAppend(job.id, 1, "a", message_id, "zombie text", last_seq=0, chunks=1)
    assert store.writes.append_text([stale]) == []
    assert store.endings.finish(job.id, 1, "a", JobState.SUCCEEDED) is None
    fresh = TextAppend(job.id, 2, "b", message_id, "real text", last_seq=0, chunks=1)
    assert [v.state for v in store.writes.append_text([fresh])] == ["generating"]
    done = store.endings.finish(job.id, 2, "b", JobState.SUCCEEDED)
    assert done is not None
    assert done.content == "real text"
    assert done.state == "done"


def test_context_is_system_prompt_plus_recent_successes(db: pw.Database) -> None:
    chat = ChatStores.open(db)
    user = chat.identity.session_user("u" * 40)
    thread = chat.threads.create_thread(user.user_id, "be brief")
    first = chat.requests.send_message(user.user_id, thread.thread_id, "one", "llama3")
    Job.update(state="succeeded").where(Job.id == first.job_id).execute()
    second = chat.requests.send_message(user.user_id, thread.thread_id, "two", "llama3")
    add_worker("w", 1)
    store = JobStores.open(db, context_messages=5, max_attempts=3)
    assignment = store.queue.claim(second.job_id, "w", 1)
    assert assignment is not None
    turns = [(t.role, t.content) for t in assignment.messages]
    # the first reply never completed (empty, not "done"), so it is left out
    assert turns == [("system", "be brief"), ("user", "one"), ("user", "two")]


def test_cancel_keeps_the_text_so_far_and_names_the_worker(db: pw.Database) -> None:
    store, job_id, message_id = claimed_job(db)
    store.writes.append_text([TextAppend(job_id, 1, "w", message_id, "Once upon", 0, 1)])
    tail = TextAppend(job_id, 1, "w", message_id, " a time", 1, 2)
    view, order = store.endings.cancel(job_id, "stopped by Owl", tail)
    assert view is not None
    assert (view.state, view.content, view.error) == (
        "cancelled",
        "Once upon a time",
        "stopped by Owl",
    )
    assert order is not None
    assert (order.worker_id, order.attempt) == ("w", 1)
    # Late text from the worker does not land; cancelling again does nothing.
    late = TextAppend(job_id, 1, "w", message_id, " there was", 2, 3)
    assert store.writes.append_text([late]) == []
    assert store.endings.cancel(job_id, "again") == (None, None)
    assert Job.get_by_id(job_id).state == "cancelled"


def _append(job_id: str, message_id: str, chunks: list[str], first_seq: int) -> TextAppend:
    """Chunks ``first_seq``.. of attempt 1 on worker w, as a coordinator writes them."""
    starts = tuple(sum(len(c) for c in chunks[:i]) for i in range(len(chunks)))
    last = first_seq + len(chunks) - 1
    return TextAppend(job_id, 1, "w", message_id, "".join(chunks), last, last + 1, starts)


def test_text_written_by_two_coordinators_is_each_chunk_once(db: pw.Database) -> None:
    """Coordinators sharing a database each write the chunks they received, in batches of
    their own: a write continues exactly where the stored text ends."""
    store, job_id, message_id = claimed_job(db)
    chunks = [f"c{i} " for i in range(10)]
    # one coordinator writes chunks 0-3, the other 0-5: chunks 4 and 5 are added
    store.writes.append_text([_append(job_id, message_id, chunks[0:4], 0)])
    store.writes.append_text([_append(job_id, message_id, chunks[0:6], 0)])
    # the first one's next batch, 4-5, is there already
    store.writes.append_text([_append(job_id, message_id, chunks[4:6], 4)])
    # a batch starting after a gap (8-9, while 6-7 are not stored) waits for them
    store.writes.append_text([_append(job_id, message_id, chunks[8:10], 8)])
    assert Message.get_by_id(message_id).content == "".join(chunks[0:6])
    done = store.endings.finish(
        job_id, 1, "w", JobState.SUCCEEDED, None, _append(job_id, message_id, chunks[6:10], 6)
    )
    assert done is not None
    assert done.content == "".join(chunks)


def test_an_overlapping_checkpoint_continues_where_the_one_before_it_ended(
    db: pw.Database,
) -> None:
    """A checkpoint repeats the chunks of the one before it, so the write first tries to
    continue from that one's last chunk (its ``stored_guess``): right, that is one
    statement for the job and one for the message; wrong either way, or out of range,
    each chunk is still stored once. The reply starts with its first text, once."""
    store, job_id, message_id = claimed_job(db)
    chunks = [f"c{i} " for i in range(12)]

    def write(append: TextAppend) -> tuple[int, list[str]]:
        with mock.patch.object(db, "execute_sql", wraps=db.execute_sql) as spy:
            written = store.writes.write_texts([append])
        statements = [str(c.args[0]).split(" SET ")[0] for c in spy.call_args_list]
        assert not written.gaps
        return len(written.started), statements

    started, _ = write(_append(job_id, message_id, chunks[0:3], 0))
    assert started == 1
    assert Message.get_by_id(message_id).state == "generating"
    # the next checkpoint holds chunks 0-5, the stored text ends at 2, as guessed
    started, statements = write(
        replace(_append(job_id, message_id, chunks[0:6], 0), stored_guess=2)
    )
    assert (started, statements) == (0, ["UPDATE job", "UPDATE message"])
    # guessed behind: another coordinator stored chunks 6-8 meanwhile
    write(_append(job_id, message_id, chunks[6:9], 6))
    started, statements = write(
        replace(_append(job_id, message_id, chunks[3:10], 3), stored_guess=5)
    )
    assert started == 0
    assert len(statements) > 2  # the stored text's end is read, then continued
    # guessed ahead, and a guess outside the append (ignored)
    write(replace(_append(job_id, message_id, chunks[9:11], 9), stored_guess=10))
    write(replace(_append(job_id, message_id, chunks[10:12], 10), stored_guess=40))
    assert Message.get_by_id(message_id).content == "".join(chunks)
    assert Message.get_by_id(message_id).content_seq == 11


class _PausingWrites(StreamWrites):
    """Waits (up to 1 s) for the other writer after applying the first append of a
    batch: two batches then hold their first rows at the same moment."""

    def __init__(self, db: pw.Database, barrier: threading.Barrier) -> None:
        super().__init__(db)
        self.barrier = barrier
        self.applied = 0

    def _apply(self, item: TextAppend, stamp: float) -> Applied:
        first = super()._apply(item, stamp)
        self.applied += 1
        if self.applied == 1:
            # broken after 1 s when the other writer is waiting for our rows
            with contextlib.suppress(threading.BrokenBarrierError):
                self.barrier.wait(timeout=1)
        return first


def test_two_coordinators_batches_over_the_same_jobs_do_not_deadlock(db: pw.Database) -> None:
    """Each coordinator's batch lists the same jobs in its own order; written in job
    order, the second batch waits for the first instead of each holding a row the other
    needs (PostgreSQL would abort one with a deadlock)."""
    queue_jobs(db, 2)
    db.execute_sql("UPDATE job SET state = 'queued'")  # type: ignore[no-untyped-call]
    add_worker("w", 2)
    jobs = JobStores.open(db, context_messages=5, max_attempts=3)
    queued = jobs.queue.queued_jobs()
    for job in queued:
        assert jobs.queue.claim(job.id, "w", 2) is not None
    ids = [(job.id, Job.get_by_id(job.id).message_id) for job in queued]
    batch = [TextAppend(j, 1, "w", m, "text", 0, 1) for j, m in ids]
    barrier = threading.Barrier(2)
    problems: list[Exception] = []

    def write(appends: list[TextAppend]) -> None:
        with db.connection_context():
            try:
                _PausingWrites(db, barrier).append_text(appends)
            except pw.PeeweeException as exc:
                problems.append(exc)

    writers = [threading.Thread(target=write, args=(order,)) for order in (batch, batch[::-1])]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(30)
    assert problems == []
    assert [Message.get_by_id(m).content for _, m in ids] == ["text", "text"]
