"""The chat's limits hold when several coordinators share one database.

On PostgreSQL coordinators scale out side by side, and a browser's or an API client's
requests can reach two of them at the same moment. Each limit is a check and then a write
("no reply generating for this user yet, so queue one"), and under READ COMMITTED two
transactions can both pass the check before either writes. Here each coordinator is a
thread with a connection of its own (as each process has), all released at once; on
SQLite the write lock already makes them take turns, and the same rules must hold."""

import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

import peewee as pw
import pytest

from coordinator.chat.rate_limits import RateLimits, Rule
from coordinator.chat.stores import ChatStores
from coordinator.db.tables import BrowserSession, Job, Message, User
from coordinator.errors import Busy, Conflict, CoordinatorError, RateLimited
from coordinator.keys.api_keys import ApiKeyStore
from farm_protocol.chat import MAX_THREAD_MEMBERS, MessageState
from tests.support.stores import asking

T = TypeVar("T")
AT_ONCE = 6
ROUNDS = 5


def at_once(db: pw.Database, calls: Sequence[Callable[[], T]]) -> list[T | Exception]:
    """Run each call in a thread of its own, on a connection of its own, released
    together; what each returned or raised."""
    barrier = threading.Barrier(len(calls))
    results: list[T | Exception] = [RuntimeError("did not run")] * len(calls)

    def run(i: int) -> None:
        db.connect(reuse_if_open=True)
        try:
            barrier.wait()
            results[i] = calls[i]()
        except (CoordinatorError, pw.PeeweeException) as exc:  # what a request would get
            results[i] = exc
        finally:
            db.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def _problems(results: Sequence[object]) -> list[Exception]:
    """Anything raised other than the limit's own refusal."""
    return [r for r in results if isinstance(r, Exception) and not isinstance(r, Conflict)]


def test_a_chat_users_waiting_replies_are_bounded_however_many_coordinators(
    db: pw.Database,
) -> None:
    """One reply generating and two more waiting behind it: 3 taken in all."""
    store = ChatStores.open(db, chat_backlog=2)
    for round_ in range(ROUNDS):
        user = store.identity.session_user(f"browser-{round_}").user_id
        threads = [store.threads.create_thread(user, "").thread_id for _ in range(AT_ONCE)]
        results = at_once(
            db, [partial(store.requests.send_message, user, t, "hello", "llama3") for t in threads]
        )
        refused = [r for r in results if isinstance(r, RateLimited)]
        assert [r for r in results if isinstance(r, Exception) and r not in refused] == []
        assert len(refused) == AT_ONCE - 3, results
        assert Job.select().where(Job.user == user).count() == 3


def test_an_api_key_has_its_limit_however_many_coordinators(db: pw.Database) -> None:
    """A key of 2 at once, with a backlog of one more per slot: 4 taken in all."""
    keys = ApiKeyStore(db)
    store = ChatStores.open(db, key_backlog=1)
    for round_ in range(ROUNDS):
        key, _ = keys.create(f"client {round_}", max_concurrent=2)
        ask = partial(
            store.requests.start_api_conversation, key, "llama3", asking([("user", "hi")])
        )
        results = at_once(db, [ask] * AT_ONCE)
        refused = [r for r in results if isinstance(r, RateLimited)]
        assert [r for r in results if isinstance(r, Exception) and r not in refused] == []
        assert len(refused) == AT_ONCE - 4, results
        assert Job.select().where(Job.api_key_id == key.id).count() == 4


def test_a_reply_retried_by_several_members_at_once_gets_one_job(db: pw.Database) -> None:
    store = ChatStores.open(db)
    for round_ in range(ROUNDS):
        owner = store.identity.session_user(f"owner-{round_}").user_id
        thread = store.threads.create_thread(owner, "").thread_id
        reply = store.requests.send_message(owner, thread, "hello", "llama3").reply.message_id
        Job.update(state="failed").where(Job.message == reply).execute()
        Message.update(state=MessageState.FAILED.value).where(Message.id == reply).execute()
        members = [
            store.identity.session_user(f"member-{round_}-{i}").user_id for i in range(AT_ONCE)
        ]
        for member in members:
            store.threads.join(thread, member)
        results = at_once(
            db, [partial(store.requests.retry_reply, m, thread, reply) for m in members]
        )
        assert _problems(results) == []
        assert sum(not isinstance(r, Exception) for r in results) == 1, results
        assert Job.select().where((Job.message == reply) & (Job.state == "queued")).count() == 1


def test_a_thread_never_gets_more_members_than_its_limit(db: pw.Database) -> None:
    store = ChatStores.open(db)
    owner = store.identity.session_user("owner").user_id
    thread = store.threads.create_thread(owner, "").thread_id
    for i in range(MAX_THREAD_MEMBERS - 3):
        store.threads.join(thread, store.identity.session_user(f"early-{i}").user_id)
    late = [store.identity.session_user(f"late-{i}").user_id for i in range(AT_ONCE)]
    results = at_once(db, [partial(store.threads.join, thread, u) for u in late])
    assert _problems(results) == []
    assert sum(isinstance(r, Conflict) for r in results) == AT_ONCE - 2, results
    assert len(store.threads.members(thread)) == MAX_THREAD_MEMBERS


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_a_new_browser_asking_several_coordinators_at_once_is_one_user(
    db: pw.Database, round_: int
) -> None:
    store = ChatStores.open(db)
    token = f"new-browser-{round_}"
    results = at_once(db, [partial(store.identity.session_user, token)] * AT_ONCE)
    assert [r for r in results if isinstance(r, Exception)] == []
    assert len({r.user_id for r in results if not isinstance(r, Exception)}) == 1
    assert BrowserSession.select().count() == 1
    assert User.select().count() == 1


def test_a_rate_limit_is_one_bucket_however_many_coordinators(db: pw.Database) -> None:
    """Each coordinator used to keep its own buckets in memory: N coordinators gave a
    user N times the allowance. The buckets are rows now, spent under a row lock."""
    limits = RateLimits(db, {"send": Rule(per_minute=1, burst=3, refusal="send")})
    for round_ in range(ROUNDS):
        results = at_once(db, [partial(limits.take, "send", f"user-{round_}")] * AT_ONCE)
        assert _problems([r for r in results if not isinstance(r, RateLimited)]) == []
        assert sum(isinstance(r, RateLimited) for r in results) == AT_ONCE - 3, results


def test_the_queue_bound_holds_however_many_coordinators(db: pw.Database) -> None:
    """Counted without a lock, coordinators admitting at the same moment each passed it
    by one; near the bound they take turns now."""
    store = ChatStores.open(db)
    for round_ in range(ROUNDS):
        before = Job.select().where(Job.state == "queued").count()
        users = [store.identity.session_user(f"q-{round_}-{i}").user_id for i in range(AT_ONCE)]
        threads = [store.threads.create_thread(u, "").thread_id for u in users]
        sends = [
            partial(store.requests.send_message, u, t, "hi", "llama3", max_queued=before + 2)
            for u, t in zip(users, threads, strict=True)
        ]
        results = at_once(db, sends)
        assert _problems([r for r in results if not isinstance(r, Busy)]) == []
        assert sum(isinstance(r, Busy) for r in results) == AT_ONCE - 2, results
        assert Job.select().where(Job.state == "queued").count() == before + 2
