"""The database runner: every call runs on its one thread, in the order submitted, with
its result or error delivered to its caller; a cancelled caller does not stop the calls
after it; a closed runner finishes what was queued, closes the thread's connection and
takes no more calls. On SQLite and PostgreSQL."""

import asyncio
import threading

import peewee as pw
import pytest

from coordinator.db import sql
from coordinator.db.runner import DbRunner
from coordinator.errors import StoreError


async def test_calls_run_on_one_thread_in_the_order_submitted(db: pw.Database) -> None:
    runner = DbRunner(db)
    seen: list[tuple[int, str]] = []

    def note(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        return n * 2

    try:
        results = await asyncio.gather(*(runner.call(note, n) for n in range(200)))
        assert results == [n * 2 for n in range(200)]
        assert [n for n, _ in seen] == list(range(200))
        assert {name for _, name in seen} == {"db"}
        assert threading.current_thread().name != "db"
        # the thread keeps one connection, and it answers
        assert await runner.call(lambda: sql.execute(db, "SELECT 1").fetchone()) == (1,)
    finally:
        runner.close()


async def test_an_error_reaches_its_caller_and_the_next_call_runs(db: pw.Database) -> None:
    runner = DbRunner(db)

    def broken() -> None:
        raise ValueError("not a store error")

    try:
        with pytest.raises(ValueError, match="not a store error"):
            await runner.call(broken)
        with pytest.raises(StoreError, match=r"database error in <lambda>: .*no_such_table"):
            await runner.call(lambda: sql.execute(db, "SELECT * FROM no_such_table"))
        db_ok = await runner.call(lambda: sql.execute(db, "SELECT 2").fetchone())
        assert db_ok == (2,)
    finally:
        runner.close()


async def test_a_cancelled_caller_leaves_the_calls_after_it_alone(db: pw.Database) -> None:
    runner = DbRunner(db)
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(30)
        return "slow"

    try:
        waiting = asyncio.create_task(runner.call(slow))
        await asyncio.to_thread(started.wait, 30)
        after = asyncio.create_task(runner.call(lambda: "after"))
        waiting.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await after == "after"
    finally:
        runner.close()


async def test_a_closed_runner_finishes_what_was_queued_and_takes_no_more(
    db: pw.Database,
) -> None:
    runner = DbRunner(db)
    connected = await runner.call(lambda: not db.is_closed())
    assert connected
    queued = [asyncio.ensure_future(runner.call(int, n)) for n in range(20)]
    await asyncio.sleep(0)  # each call is queued before the close
    await asyncio.to_thread(runner.close)
    assert await asyncio.gather(*queued) == list(range(20))
    with pytest.raises(RuntimeError, match="closed"):
        await runner.call(lambda: None)
    runner.close()  # a second close does nothing


def test_a_runner_that_never_ran_closes_at_once(db: pw.Database) -> None:
    DbRunner(db).close()
