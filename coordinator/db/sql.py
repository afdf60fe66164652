"""Hand-written statements for the job path (a request stored, claimed, accepted,
streamed, finished), and running them.

Peewee's query builder compiles every statement in Python, each time: on the job path,
about 45 statements a job, that was two thirds of the database thread's time, more than
the database's own work (benchmarks/job_path.py). These statements are written out once,
in the SQL that SQLite and PostgreSQL share, with ``%s`` placeholders (turned into the
driver's own); the rest of the coordinator keeps the query builder. The column names are
those of ``coordinator.db.tables`` (a foreign key ``thread`` is the column ``thread_id``)."""

from collections.abc import Iterable, Sequence
from typing import Any

import peewee as pw

from farm_protocol.chat import MessageView

# The columns a MessageView is built from, in order (see message_views).
MESSAGE_COLUMNS = (
    "id, thread_id, role, author, content, state, model, job_id, content_seq, error, created_at"
)
_MESSAGE_FIELDS = (
    "message_id",
    "thread_id",
    "role",
    "author",
    "content",
    "state",
    "model",
    "job_id",
    "content_seq",
    "error",
    "created_at",
)
# Every column of a message row, for inserting one.
_MESSAGE_INSERT = (
    "INSERT INTO message (id, thread_id, user_id, role, author, content, content_seq, state,"
    " model, job_id, error, created_at, updated_at) VALUES "
)
_MESSAGE_VALUES = "(%s, %s, %s, %s, %s, %s, -1, %s, %s, %s, NULL, %s, %s)"


def execute(db: pw.Database, template: str, params: Sequence[Any] = ()) -> Any:
    """Run one hand-written statement; returns the driver's cursor."""
    return db.execute_sql(template.replace("%s", db.param), tuple(params))  # type: ignore[no-untyped-call]


def in_list(count: int) -> str:
    """``(%s, %s, ...)`` for an IN with ``count`` values (SQL has no empty IN list: the
    caller skips the statement instead)."""
    if count < 1:
        raise ValueError("an IN list needs at least one value")
    return "(" + ", ".join(["%s"] * count) + ")"


def message_views(rows: Iterable[Sequence[Any]]) -> list[MessageView]:
    """Views of rows selected as MESSAGE_COLUMNS."""
    return [MessageView.model_validate(dict(zip(_MESSAGE_FIELDS, r, strict=True))) for r in rows]


def inserted_view(row: dict[str, Any]) -> MessageView:
    """The view of a message just inserted by :func:`insert_messages`."""
    return MessageView(
        message_id=row["id"],
        thread_id=row["thread_id"],
        role=row["role"],
        author=row["author"],
        content=row["content"],
        state=row["state"],
        model=row["model"],
        job_id=row["job_id"],
        created_at=row["created_at"],
    )


def insert_messages(db: pw.Database, rows: Sequence[dict[str, Any]]) -> None:
    """Insert messages in one statement. Each row: id, thread_id, user_id, role, author,
    content, state, model, job_id, created_at (content_seq starts at -1, no error)."""
    params: list[Any] = []
    for r in rows:
        params += [
            r["id"],
            r["thread_id"],
            r["user_id"],
            r["role"],
            r["author"],
            r["content"],
            r["state"],
            r["model"],
            r["job_id"],
            r["created_at"],
            r["created_at"],
        ]
    execute(db, _MESSAGE_INSERT + ", ".join([_MESSAGE_VALUES] * len(rows)), params)


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
