"""Runs the synchronous stores off the event loop, on one dedicated thread.

One thread serialises this process's writes, which is what SQLite wants, and keeps calls
in submission order (a text flush submitted before a finish is written before it). The
thread keeps one connection open (opening one per call cost a file open and the pragmas
on SQLite, a TCP connection and a login on PostgreSQL); a connection error drops it, and
the next call connects again.
"""

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import peewee as pw

from coordinator.errors import CoordinatorError, StoreError

P = ParamSpec("P")
T = TypeVar("T")


class DbRunner:
    def __init__(self, db: pw.Database) -> None:
        self.db = db
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db")

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(self._guarded, fn, *args, **kwargs)
        )

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
        self._executor.submit(self._disconnect).result()  # the connection is that thread's
        self._executor.shutdown(wait=True)
