"""Schema upgrades in place: a database created by schema version 1 (its DDL is kept in
tests/data, exactly as that version's coordinator created it), holding data, is upgraded
by ``migrate`` to the current version without losing a row, and ends up with the same
columns and indexes as a database created fresh. Coordinators started together create or
upgrade a database once, instead of failing on each other's work."""

import subprocess
import sys
from pathlib import Path

import peewee as pw
import pytest

from coordinator.db.database import bind, migrate, open_database
from coordinator.db.tables import (
    ALL_TABLES,
    SCHEMA_VERSION,
    ApiKey,
    Job,
    Message,
    ReplyFailure,
    SchemaInfo,
    Thread,
    Worker,
)
from coordinator.errors import StoreError
from tests.conftest import scratch_database_url

DATA = Path(__file__).parent / "data"

V1_ROWS = [
    "INSERT INTO schema_info (version) VALUES (1)",
    "INSERT INTO \"user\" (id, name, created_at) VALUES ('u1', 'Owl', 1.5)",
    "INSERT INTO thread (id, title, description, created_by_id, created_at, updated_at)"
    " VALUES ('t1', 'hello', 'hello', 'u1', 1.5, 1.5)",
    "INSERT INTO message (id, thread_id, user_id, role, author, content, content_seq, state,"
    " model, job_id, error, created_at, updated_at) VALUES ('m0', 't1', 'u1', 'user',"
    " 'Owl', 'hello', -1, 'done', NULL, NULL, NULL, 1.4, 1.4)",
    "INSERT INTO message (id, thread_id, user_id, role, author, content, content_seq, state,"
    " model, job_id, error, created_at, updated_at) VALUES ('m1', 't1', 'u1', 'assistant',"
    " 'llama3', 'half a rep', 3, 'generating', 'llama3', 'j1', NULL, 1.5, 1.6)",
    "INSERT INTO worker (id, name, key_hash, created_at, revoked_at, session_id, state,"
    " last_seen, models, loaded_models, capacity, simulated, version) VALUES ('w1', 'box',"
    " 'scrypt$x', 1.0, NULL, 's1', 'online', 2.0, '[\"llama3:latest\"]', '[]', 2, FALSE, '0.1')",
    "INSERT INTO job (id, message_id, user_id, model, state, attempt, worker_id, chunks,"
    " error, created_at, assigned_at, accepted_at, first_token_at, last_token_at, finished_at)"
    " VALUES ('j1', 'm1', 'u1', 'llama3', 'running', 1, 'w1', 4, NULL, 1.5, 1.51, 1.52,"
    " 1.53, 1.6, NULL)",
]


def _create_v1(db: pw.Database, dialect: str) -> None:
    ddl = (DATA / f"schema_v1.{dialect}.sql").read_text()
    with db.atomic():
        for statement in filter(None, (s.strip() for s in ddl.split(";"))):
            db.execute_sql(statement)  # type: ignore[no-untyped-call]
        for statement in V1_ROWS:
            db.execute_sql(statement)  # type: ignore[no-untyped-call]


def _shape(db: pw.Database) -> dict[str, object]:
    """Every table's columns (name, nullability) and indexes (columns, uniqueness)."""
    shape: dict[str, object] = {}
    for model in ALL_TABLES:
        table = model._meta.table_name
        columns = sorted((c.name, c.null) for c in db.get_columns(table))
        indexes = sorted((tuple(i.columns), i.unique) for i in db.get_indexes(table))
        shape[table] = (columns, indexes)
    return shape


def test_a_v1_database_is_upgraded_in_place(db_url: str, tmp_path: Path) -> None:
    dialect = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    old = open_database(db_url)
    _create_v1(old, dialect)
    assert migrate(old) == SCHEMA_VERSION
    with old.connection_context():
        assert SchemaInfo.get().version == SCHEMA_VERSION
        # The data survived, and the new columns hold their defaults.
        message = Message.get_by_id("m1")
        assert (message.content, message.content_seq, message.state) == (
            "half a rep",
            3,
            "generating",
        )
        # Each thread became one branch, in the order of its messages' times.
        assert (Message.get_by_id("m0").parent_id, message.parent_id) == (None, "m0")
        assert Thread.get_by_id("t1").leaf_id == "m1"
        job = Job.get_by_id("j1")
        assert (job.state, job.attempt, job.worker_id, job.chunks) == ("running", 1, "w1", 4)
        assert job.api_key_id is None
        assert job.avoid_worker_id is None
        worker = Worker.get_by_id("w1")
        assert (worker.capacity, worker.failures, worker.jobs_succeeded) == (2, 0, 0)
        assert worker.quarantined_until is None
        assert ApiKey.select().count() == 0
        assert ReplyFailure.select().count() == 0
        upgraded = _shape(old)
    # Migrating again is a no-op.
    assert migrate(old) == SCHEMA_VERSION
    old.close()

    kind = "sqlite" if dialect == "sqlite" else "postgres"
    (tmp_path / "fresh").mkdir()
    with scratch_database_url(kind, tmp_path / "fresh") as fresh_url:
        fresh = open_database(fresh_url)
        migrate(fresh)
        fresh_shape = _shape(fresh)
        fresh.close()
    assert fresh_shape == upgraded


def test_a_database_from_a_newer_coordinator_is_refused(db_url: str) -> None:
    db = open_database(db_url)
    migrate(db)
    SchemaInfo.update(version=SCHEMA_VERSION + 1).execute()
    with pytest.raises(StoreError, match="newer than this coordinator"):
        migrate(db)
    db.close()


MIGRATE_WHEN_TOLD = (
    "import sys\n"
    "from coordinator.db.database import bind, migrate, open_database\n"
    "db = open_database(sys.argv[1])\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "print(migrate(db))\n"
)


@pytest.mark.parametrize("start", ["empty", "version 1"])
def test_coordinators_started_together_prepare_the_database_once(db_url: str, start: str) -> None:
    if start == "version 1":
        old = open_database(db_url)
        _create_v1(old, "sqlite" if db_url.startswith("sqlite") else "postgresql")
        old.close()
    starting = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_WHEN_TOLD, db_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for process in starting:  # all three connected, then all told at once
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
    for process in starting:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in starting:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert out.strip() == str(SCHEMA_VERSION)
    db = open_database(db_url)
    bind(db)
    with db.connection_context():
        assert SchemaInfo.select().count() == 1
        assert ApiKey.select().count() == 0  # its table exists
        if db_url.startswith("sqlite"):
            assert db.execute_sql("PRAGMA journal_mode").fetchone() == ("wal",)  # type: ignore[no-untyped-call]
    db.close()
