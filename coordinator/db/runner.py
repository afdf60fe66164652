"""Runs the synchronous stores off the event loop, on one dedicated thread.

One thread serialises this process's writes, which is what SQLite wants, and keeps calls
in submission order (a text flush submitted before a finish is written before it). The
thread keeps one connection open (opening one per call cost a file open and the pragmas
on SQLite, a TCP connection and a login on PostgreSQL); a connection error drops it, and
the next call connects again.

A call is a queue entry and an asyncio future settled from the thread: half the CPU of
``run_in_executor``, whose ``concurrent.futures.Future`` (a lock and a condition each) and
chained callbacks cost more than most of the statements a call runs (a reply makes about
a dozen calls; ``python -m benchmarks db_hop`` has the figures).
"""

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import peewee as pw

from coordinator.errors import CoordinatorError, StoreError

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# what waits for the thread: the caller's loop and future, and the work
_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


def _settle(future: "asyncio.Future[Any]", ok: bool, value: Any) -> None:
    if future.done():  # the caller was cancelled meanwhile: the outcome has no taker
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class DbRunner:
    def __init__(self, db: pw.Database) -> None:
        self.db = db
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()  # starting and closing the thread

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._start()
        self._calls.put((loop, future, lambda: self._guarded(fn, *args, **kwargs)))
        return await future

    def _start(self) -> None:
        if self._thread is not None and not self._closed:
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("the database runner is closed")
            if self._thread is None:
                # a daemon: a runner nobody closed must not hold the interpreter open
                self._thread = threading.Thread(target=self._serve, name="db", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            loop, future, work = call
            try:
                outcome, ok = work(), True
            except BaseException as exc:  # noqa: BLE001 (the caller gets it, and the thread lives)
                outcome, ok = exc, False
            try:
                loop.call_soon_threadsafe(_settle, future, ok, outcome)
            except RuntimeError:  # the caller's loop is closed: nobody waits for it
                log.debug("a database call finished after its event loop closed")
        self._disconnect()  # the connection is this thread's

    def _guarded(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            if self.db.is_closed():
                self.db.connect()
            return fn(*args, **kwargs)
        except CoordinatorError:
            raise
        except pw.PeeweeException as exc:
            if isinstance(exc, pw.OperationalError | pw.InterfaceError):
                self._disconnect()  # a lost server: connect afresh next time
            raise StoreError(f"database error in {getattr(fn, '__name__', fn)}: {exc}") from exc

    def _disconnect(self) -> None:
        try:
            if not self.db.is_closed():
                self.db.close()
        except pw.PeeweeException:
            pass

    def close(self) -> None:
        """Finish the calls already queued, close the thread's connection, stop it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._calls.put(None)
            thread.join()
