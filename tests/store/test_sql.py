"""The hand-written statements' helpers (coordinator.db.sql) and their edges, on each
backend."""

import peewee as pw
import pytest

from coordinator.chat.stores import ChatStores
from coordinator.db import sql
from coordinator.db.tables import Job, Message
from coordinator.errors import NotFound


def test_an_in_list_needs_a_value() -> None:
    assert sql.in_list(3) == "(%s, %s, %s)"
    with pytest.raises(ValueError, match="at least one"):
        sql.in_list(0)  # "IN ()" is not SQL, and "(%s)" with no value would fail later


def test_a_message_from_a_user_that_does_not_exist_stores_nothing(db: pw.Database) -> None:
    chat = ChatStores.open(db)
    owner = chat.identity.session_user("o" * 40)
    thread = chat.threads.create_thread(owner.user_id, "")
    with pytest.raises(NotFound, match="no user"):
        chat.requests.send_message("nobody", thread.thread_id, "hello", "llama3")
    assert Job.select().count() == 0
    assert Message.select().where(Message.thread == thread.thread_id).count() == 0
