"""What a reply's *done* reports is kept with it, and an API key's usage per day is summed
from the replies on record, on SQLite and PostgreSQL."""

import hashlib
import time

import peewee as pw

from coordinator.chat.stores import ChatStores
from coordinator.db.tables import Job, Message
from coordinator.jobs.records import Expected, TextAppend
from coordinator.jobs.states import JobState
from coordinator.jobs.stores import JobStores
from coordinator.keys.api_keys import ApiKeyStore
from coordinator.keys.usage import key_usage
from tests.support.stores import add_worker, asking

DAY = 86400


def test_a_done_keeps_the_models_counts_tool_calls_and_who_served_it(db: pw.Database) -> None:
    chat = ChatStores.open(db)
    key, _ = ApiKeyStore(db).create("bot", max_concurrent=2)
    new = chat.requests.start_api_conversation(key, "llama3", asking([("user", "weather?")]))
    add_worker("w", 1)
    store = JobStores.open(db, context_messages=5, max_attempts=3)
    assert store.queue.claim(new.job_id, "w", 1) is not None
    job = store.writes.active_job(new.job_id)
    assert job is not None
    calls = '[{"name": "get_weather", "arguments": {"city": "Lima"}}]'
    text = "Calling."
    digest = hashlib.sha256(text.encode()).hexdigest()
    finished = store.endings.finish_checked(
        job,
        Expected(1, len(text), digest, (12, 3, "tool_calls", calls)),
        [TextAppend(new.job_id, 1, "w", new.reply.message_id, text, last_seq=0, chunks=1)],
    )
    assert finished.started  # its first text came with its done
    view = finished.view
    assert view is not None
    assert view.state == "done"
    assert (view.prompt_tokens, view.completion_tokens, view.finish_reason) == (
        12,
        3,
        "tool_calls",
    )
    assert view.served_by == "w"  # the worker's name
    assert view.generation_s is not None
    assert view.generation_s >= 0
    assert view.tool_calls is not None
    assert [(c.name, c.arguments) for c in view.tool_calls] == [("get_weather", {"city": "Lima"})]


def test_a_keys_usage_is_summed_per_day(db: pw.Database) -> None:
    chat = ChatStores.open(db)
    keys = ApiKeyStore(db)
    key, _ = keys.create("bot", max_concurrent=10)
    other, _ = keys.create("other", max_concurrent=10)
    today = int(time.time() // DAY) * DAY + 60
    ended = [  # key, finished at, state, prompt tokens, completion tokens
        (key, today, JobState.SUCCEEDED, 5, 10),
        (key, today + 1, JobState.SUCCEEDED, 3, 2),
        (key, today, JobState.FAILED, 100, 100),  # not a reply served
        (key, today - 2 * DAY, JobState.SUCCEEDED, 7, 1),
        (key, today - 40 * DAY, JobState.SUCCEEDED, 50, 50),  # before the window
        (other, today, JobState.SUCCEEDED, 1000, 1000),
    ]
    for owner, at, state, prompt, completion in ended:
        new = chat.requests.start_api_conversation(owner, "llama3", asking([("user", "q")]))
        Job.update(state=state.value, finished_at=at).where(Job.id == new.job_id).execute(db)
        Message.update(prompt_tokens=prompt, completion_tokens=completion).where(
            Message.id == new.reply.message_id
        ).execute(db)
    usage = key_usage(db, key.id, 30)
    day = time.strftime("%Y-%m-%d", time.gmtime(today))
    before = time.strftime("%Y-%m-%d", time.gmtime(today - 2 * DAY))
    assert [(u.day, u.replies, u.prompt_tokens, u.completion_tokens) for u in usage] == [
        (before, 1, 7, 1),
        (day, 2, 8, 12),
    ]
    assert usage[-1].total_tokens == 20
    assert [u.day for u in key_usage(db, key.id, 1)] == [day]
