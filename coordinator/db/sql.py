"""Running hand-written statements, and the locks a check-then-write takes.

Peewee's query builder compiles every statement in Python, each time: on the job path,
about 45 statements a job, that was two thirds of the database thread's time, more than
the database's own work (benchmarks/job_path.py). The statements on that path are
therefore written out once, in the SQL that SQLite and PostgreSQL share, with ``%s``
placeholders (turned into the driver's own), in one ``statements`` module per package
(``coordinator.jobs.statements``, ``coordinator.chat.statements``,
``coordinator.workers.statements``). So are those every chat request, heartbeat and model
picker runs (the session's user, membership, a worker's sign of life, what the fleet
serves): in benchmarks/capacity.py they were half of the database thread's time, each
compiled anew. The rest of the coordinator keeps the query builder.
The column names are those of ``coordinator.db.tables`` (a foreign key ``thread`` is the
column ``thread_id``)."""

from collections.abc import Sequence
from typing import Any

import peewee as pw


def execute(db: pw.Database, template: str, params: Sequence[Any] = ()) -> Any:
    """Run one hand-written statement; returns the driver's cursor."""
    return db.execute_sql(template.replace("%s", db.param), tuple(params))  # type: ignore[no-untyped-call]


def execute_in(
    db: pw.Database, template: str, values: Sequence[Any], params: Sequence[Any] = ()
) -> Any:
    """Run a statement whose ``{ids}`` is an IN list of ``values`` (then ``params``)."""
    return execute(db, template.format(ids=in_list(len(values))), [*values, *params])


def in_list(count: int) -> str:
    """``(%s, %s, ...)`` for an IN with ``count`` values (SQL has no empty IN list: the
    caller skips the statement instead)."""
    if count < 1:
        raise ValueError("an IN list needs at least one value")
    return "(" + ", ".join(["%s"] * count) + ")"


def row_lock(db: pw.Database) -> str:
    """What ends a read whose rows a check-then-write in the same transaction depends on
    ("this user has no reply generating, so queue one"): `` FOR NO KEY UPDATE`` on
    PostgreSQL, where coordinators side by side would otherwise both pass the check
    before either writes (it still lets other transactions insert rows that refer to the
    locked one); nothing on SQLite, where a write transaction holds the database's write
    lock from its start (``write_transaction``)."""
    return "" if isinstance(db, pw.SqliteDatabase) else " FOR NO KEY UPDATE"


def name_lock(db: pw.Database, name: str) -> None:
    """Inside a write transaction, take turns with every other transaction locking
    ``name``: on PostgreSQL an advisory lock held until the transaction ends, for a check
    whose rows do not exist yet; on SQLite the write transaction already does."""
    if not isinstance(db, pw.SqliteDatabase):
        execute(db, "SELECT pg_advisory_xact_lock(hashtext(%s))", (name,)).fetchall()


def is_sqlite(db: pw.Database) -> bool:
    return isinstance(db, pw.SqliteDatabase)
