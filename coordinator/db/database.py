"""Opening the database from a URL, and bringing its schema up to date in place."""

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import peewee as pw
from playhouse import db_url
from playhouse import migrate as schema

from coordinator.db.tables import (
    ALL_TABLES,
    SCHEMA_VERSION,
    ApiKey,
    Enrolment,
    RateBucket,
    ReplyFailure,
    SchemaInfo,
    database_proxy,
)
from coordinator.errors import StoreError

log = logging.getLogger(__name__)


def _v1_to_v2(db: pw.Database) -> None:
    """Worker health and totals, API keys, and the worker a retry should avoid."""
    m = schema.SchemaMigrator.from_database(db)
    schema.migrate(
        m.add_column("worker", "failures", pw.IntegerField(default=0)),
        m.add_column("worker", "quarantined_until", pw.DoubleField(null=True)),
        m.add_column("worker", "jobs_succeeded", pw.IntegerField(default=0)),
        m.add_column("worker", "jobs_failed", pw.IntegerField(default=0)),
        m.add_column("worker", "chars_generated", pw.BigIntegerField(default=0)),
        m.add_column("job", "api_key_id", pw.CharField(max_length=32, null=True)),
        m.add_index("job", ("api_key_id",), False),
        m.add_column("job", "avoid_worker_id", pw.CharField(max_length=64, null=True)),
    )
    db.create_tables([ApiKey])


def _v2_to_v3(db: pw.Database) -> None:
    """The nonce a worker's key is derived from."""
    m = schema.SchemaMigrator.from_database(db)
    schema.migrate(m.add_column("worker", "key_nonce", pw.CharField(max_length=64, default="")))


def _v3_to_v4(db: pw.Database) -> None:
    """Jobs indexed by owner and state: the per-user and per-key limits are checked on every
    request, and read through all of an owner's past jobs with the owner's index alone."""
    m = schema.SchemaMigrator.from_database(db)
    schema.migrate(
        m.drop_index("job", "job_user_id"),
        m.drop_index("job", "job_api_key_id"),
        m.add_index("job", ("user_id", "state"), False),
        m.add_index("job", ("api_key_id", "state"), False),
    )


def _v4_to_v5(db: pw.Database) -> None:
    """The worker a job has counted against (replaced in version 6)."""
    m = schema.SchemaMigrator.from_database(db)
    schema.migrate(m.add_column("job", "blamed_worker_id", pw.CharField(max_length=64, null=True)))


def _v5_to_v6(db: pw.Database) -> None:
    """The workers each reply has failed on: a reply counts once against a worker, also
    when its user retries it (a job's ``blamed_worker_id`` knew only one job's attempts)."""
    db.create_tables([ReplyFailure])
    m = schema.SchemaMigrator.from_database(db)
    schema.migrate(m.drop_column("job", "blamed_worker_id"))


def _v6_to_v7(db: pw.Database) -> None:
    """Rate-limit buckets in the database: shared by every coordinator."""
    db.create_tables([RateBucket])


def _v7_to_v8(db: pw.Database) -> None:
    """What an API client asked for beyond the messages (the model's options, a format,
    tools, its exact context), and what the model reported (token counts, why it ended,
    the tools it called)."""
    m = schema.SchemaMigrator.from_database(db)
    schema.migrate(
        m.add_column("job", "request", pw.TextField(null=True)),
        m.add_column("message", "prompt_tokens", pw.IntegerField(null=True)),
        m.add_column("message", "completion_tokens", pw.IntegerField(null=True)),
        m.add_column("message", "finish_reason", pw.CharField(max_length=32, null=True)),
        m.add_column("message", "tool_calls", pw.TextField(null=True)),
    )


def _v8_to_v9(db: pw.Database) -> None:
    """Enrolment tokens: a worker joins with a one-time line, its key never shown."""
    db.create_tables([Enrolment])


def _v9_to_v10(db: pw.Database) -> None:
    """What the farm did for a reply: which worker served it, and how long it took."""
    m = schema.SchemaMigrator.from_database(db)
    schema.migrate(
        m.add_column("message", "served_by", pw.CharField(max_length=200, null=True)),
        m.add_column("message", "generation_s", pw.DoubleField(null=True)),
    )


def _v10_to_v11(db: pw.Database) -> None:
    """Conversations branch: each message names the one it follows, and each thread the
    latest message of the branch it shows. Until now every thread was one line, in the
    order of its messages' times."""
    m = schema.SchemaMigrator.from_database(db)
    schema.migrate(
        m.add_column("message", "parent_id", pw.CharField(max_length=32, null=True)),
        m.add_index("message", ("parent_id",), False),
        m.add_column("thread", "leaf_id", pw.CharField(max_length=32, null=True)),
    )
    for statement in (
        "UPDATE message SET parent_id = o.prev FROM (SELECT id, LAG(id) OVER"
        " (PARTITION BY thread_id ORDER BY created_at, id) AS prev FROM message) AS o"
        " WHERE message.id = o.id AND o.prev IS NOT NULL",
        "UPDATE thread SET leaf_id = (SELECT id FROM message WHERE message.thread_id = thread.id"
        " ORDER BY created_at DESC, id DESC LIMIT 1)",
    ):
        db.execute_sql(statement)  # type: ignore[no-untyped-call]


# Upgrades from version N to N+1, applied in order inside one transaction. Version 1 is
# the initial schema; tests/data holds its DDL so the upgrade path stays tested.
MIGRATIONS: dict[int, Callable[[pw.Database], None]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
    4: _v4_to_v5,
    5: _v5_to_v6,
    6: _v6_to_v7,
    7: _v7_to_v8,
    8: _v8_to_v9,
    9: _v9_to_v10,
    10: _v10_to_v11,
}


class _WalSqliteDatabase(pw.SqliteDatabase):
    """SQLite in WAL mode. Turning a new file to WAL takes a lock that no busy timeout waits
    for: processes opening a new file together (coordinators, the command line) would
    fail with "database is locked", so each connection retries it for up to 10 s."""

    def _add_conn_hooks(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                conn.execute("PRAGMA journal_mode = wal")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        super()._add_conn_hooks(conn)  # type: ignore[misc]


def open_database(url: str) -> pw.Database:
    """``sqlite:///path`` (WAL) or ``postgresql://user:password@host:port/db?options``.

    Parsed by ``playhouse.db_url``: query parameters reach the driver (``sslmode=require``,
    ``connect_timeout=5``, ``application_name=...``), and the user and password are
    percent-decoded (a password holding ``@`` or ``/`` is written ``%40``, ``%2F``)."""
    scheme = urlsplit(url).scheme
    if scheme not in ("sqlite", "postgres", "postgresql"):
        raise ValueError(
            f"unsupported database URL {url!r}: use sqlite:///file or postgresql://..."
        )
    params: dict[str, Any] = db_url.parse(url)
    database = params.pop("database", None)
    if scheme == "sqlite":
        return _WalSqliteDatabase(
            database or ":memory:",
            pragmas={"synchronous": "normal", "foreign_keys": 1, "busy_timeout": 10_000},
            check_same_thread=False,
            **params,
        )
    for secret in ("user", "password"):
        if isinstance(params.get(secret), str):
            params[secret] = unquote(params[secret])
    params.setdefault("host", "127.0.0.1")
    params.setdefault("port", 5432)
    return pw.PostgresqlDatabase(database or "postgres", **params)


def write_transaction(db: pw.Database) -> pw._atomic:
    """A write transaction; on SQLite take the write lock up front (no upgrade deadlock
    between two writers that both began by reading)."""
    if isinstance(db, pw.SqliteDatabase):
        return db.atomic("IMMEDIATE")
    return db.atomic()


def bind(db: pw.Database) -> None:
    database_proxy.initialize(db)


def migrate(db: pw.Database) -> int:
    """Create a fresh schema, or upgrade an older one in place. Returns the version.

    A schema already current is only read: the command line calls this beside a running
    coordinator, and on SQLite a transaction that read first and then writes fails at once
    ("database is locked") if anyone else wrote meanwhile. Creating or upgrading takes the
    write lock up front instead, and on PostgreSQL a lock of its own, so that coordinators
    started together on an empty database create it once instead of failing on each
    other's tables."""
    bind(db)
    try:
        version = _current_version(db)
        if version == SCHEMA_VERSION:
            return version
        with write_transaction(db):
            if isinstance(db, pw.PostgresqlDatabase):
                # coordinators starting together take turns (SQLite's lock is the write lock)
                db.execute_sql("SELECT pg_advisory_xact_lock(hashtext('llama-farm schema'))")  # type: ignore[no-untyped-call]
            version = _current_version(db)  # another process may have done it meanwhile
            if version is None:
                db.create_tables(ALL_TABLES)
                SchemaInfo.create(version=SCHEMA_VERSION)
                log.info("created database schema version %d", SCHEMA_VERSION)
                return SCHEMA_VERSION
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](db)
                version += 1
                log.info("upgraded database schema to version %d", version)
            SchemaInfo.update(version=version).execute()
            return version
    except pw.PeeweeException as exc:
        raise StoreError(f"cannot prepare the database: {exc}") from exc


def _current_version(db: pw.Database) -> int | None:
    """The schema's version, None for an empty database; refuses a newer schema."""
    if not db.table_exists(SchemaInfo._meta.table_name):
        return None
    version = int(SchemaInfo.get().version)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database schema {version} is newer than this coordinator's {SCHEMA_VERSION}"
        )
    return version


class NoDatabase(Exception):
    """An admin command pointed at a database that does not exist (yet)."""


def open_for_admin(url: str, *, create: bool) -> pw.Database:
    """The coordinator's database for a command run by hand, brought up to date. A
    database that does not exist, or holds no llama-farm schema, is made only with
    ``create``: a wrong or missing FARM_DATABASE_URL must not make a new, empty farm whose
    keys work nowhere (NoDatabase says which database and what to do)."""
    if not create:
        parts = urlsplit(url)
        if parts.scheme == "sqlite":
            path = db_url.parse(url).get("database") or ":memory:"
            if path != ":memory:" and not Path(path).exists():
                raise NoDatabase(_missing(url))
    db = open_database(url)
    database_proxy.initialize(db)
    if not create:
        with db.connection_context():
            if _current_version(db) is None:
                db.close()
                raise NoDatabase(_missing(url))
    migrate(db)
    return db


def _missing(url: str) -> str:
    shown = url.split("@")[-1] if "@" in url else url
    return (
        f"no llama-farm database at {shown}: set FARM_DATABASE_URL (or --env-file with the"
        " coordinator's settings) to the farm's, or pass --create to make a new one"
    )
