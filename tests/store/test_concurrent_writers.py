"""Another writer on the same SQLite file (the command line beside a running coordinator,
or the coordinator beside the command line) never makes an operation fail with "database
is locked".

On SQLite a transaction that reads first and writes later cannot wait for the write lock:
if another connection holds it, the write fails at once, whatever the busy timeout. So
every transaction that writes takes the lock up front (``write_transaction``), and
``migrate`` only reads a schema that is already current. Each case runs an operation while
another connection holds the write lock, which it releases with a committed change a
moment later; the operation must wait for it and succeed. (CI once failed on the first
case: ``llama-farm api-keys add`` beside a running ``llama-farm dev``.)"""

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import peewee as pw
import pytest

from coordinator.chat.stores import ChatStores
from coordinator.db.database import migrate, open_database
from coordinator.db.tables import Job, Message
from farm_protocol.chat import MessageState
from llama_farm import cli

HOLD_S = 0.5


@contextmanager
def another_writer(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holds the write lock; it commits a change ``HOLD_S`` later."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("UPDATE schema_info SET version = version")
    release = threading.Timer(HOLD_S, other.execute, ("COMMIT",))
    release.start()
    try:
        yield other
    finally:
        release.join()
        other.close()


@pytest.fixture
def farm_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[pw.Database, Path]]:
    path = tmp_path / "farm.sqlite3"
    monkeypatch.setenv("FARM_DATABASE_URL", f"sqlite:///{path}")
    db = open_database(f"sqlite:///{path}")
    migrate(db)
    yield db, path
    db.close()


def _chat(db: pw.Database) -> tuple[ChatStores, str, str, str]:
    """A store, a user, a thread of theirs and a reply in it that failed."""
    store = ChatStores.open(db)
    user = store.identity.session_user("browser-1").user_id
    thread = store.threads.create_thread(user, "").thread_id
    new = store.requests.send_message(user, thread, "hello", "llama3")
    Job.update(state="failed").where(Job.id == new.job_id).execute()
    Message.update(state=MessageState.FAILED.value).where(
        Message.id == new.reply.message_id
    ).execute()
    return store, user, thread, new.reply.message_id


def _cli(*argv: str) -> Callable[[pw.Database], object]:
    def run(_db: pw.Database) -> object:
        assert cli.main(list(argv)) == 0
        return None

    return run


def _session_user(db: pw.Database) -> object:
    return ChatStores.open(db).identity.session_user("browser-2")


OPERATIONS: dict[str, Callable[[pw.Database], object]] = {
    "api-keys add": _cli("api-keys", "add", "--name", "a client"),
    "workers add": _cli("workers", "add", "--name", "a box"),
    "a new browser session": _session_user,
}


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_an_operation_waits_for_another_writer(
    name: str, farm_db: tuple[pw.Database, Path]
) -> None:
    db, path = farm_db
    with another_writer(path) as other:
        OPERATIONS[name](db)
        assert not other.in_transaction  # it waited for the other writer, and then ran


def test_migrating_a_current_schema_only_reads(farm_db: tuple[pw.Database, Path]) -> None:
    """What every command and service does first, beside a coordinator that writes."""
    db, path = farm_db
    with another_writer(path) as other:
        migrate(db)
        assert other.in_transaction  # it did not even wait


def test_a_chat_user_s_changes_wait_for_another_writer(farm_db: tuple[pw.Database, Path]) -> None:
    """Renaming, joining and retrying each read before they write."""
    db, path = farm_db
    store, user, thread, reply_id = _chat(db)
    other_user = store.identity.session_user("browser-3").user_id
    steps: list[Callable[[], object]] = [
        lambda: store.identity.rename(user),
        lambda: store.threads.join(thread, other_user),
        lambda: store.requests.retry_reply(user, thread, reply_id),
    ]
    for step in steps:
        with another_writer(path) as other:
            step()
            assert not other.in_transaction


def test_a_new_file_turns_to_wal_once_another_opener_lets_go(tmp_path: Path) -> None:
    """Turning a new file to WAL needs a lock that no busy timeout waits for: a process
    opening the file while another one is creating it (two coordinators started
    together, or a command beside a first start) retries instead of failing."""
    path = tmp_path / "new.sqlite3"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # still in the rollback journal: not WAL yet
    other.execute("CREATE TABLE being_created (x INTEGER)")
    release = threading.Timer(HOLD_S, other.execute, ("COMMIT",))
    release.start()
    try:
        db = open_database(f"sqlite:///{path}")
        db.connect()
        assert not other.in_transaction  # it waited for the other opener
        assert db.execute_sql("PRAGMA journal_mode").fetchone() == ("wal",)  # type: ignore[no-untyped-call]
        db.close()
    finally:
        release.join()
        other.close()
