"""Who is chatting, on SQLite and PostgreSQL: a browser session's user is made once and
found again, its last sighting written at most once a minute; a thread's members in the
order they joined."""

import time

import peewee as pw

from coordinator.chat.stores import ChatStores
from coordinator.db.tables import BrowserSession, ThreadMember
from coordinator.keys.hashing import hash_session_token


def test_a_session_is_one_user_seen_at_most_once_a_minute(db: pw.Database) -> None:
    identity = ChatStores.open(db).identity
    assert identity.find_user("t" * 40) is None  # never seen: nobody
    made = identity.session_user("t" * 40)
    assert identity.session_user("t" * 40) == made  # found again, not made anew
    assert identity.find_user("u" * 40) is None
    assert identity.session_user("u" * 40).user_id != made.user_id

    token_hash = hash_session_token("t" * 40)
    seen = BrowserSession.get_by_id(token_hash).last_seen
    assert identity.find_user("t" * 40) == made
    assert BrowserSession.get_by_id(token_hash).last_seen == seen  # within the minute
    BrowserSession.update(last_seen=time.time() - 61).where(
        BrowserSession.token_hash == token_hash
    ).execute()
    assert identity.find_user("t" * 40) == made
    assert BrowserSession.get_by_id(token_hash).last_seen > time.time() - 5


def test_members_in_the_order_they_joined(db: pw.Database) -> None:
    chat = ChatStores.open(db)
    owner, guest, stranger = (chat.identity.session_user(c * 40) for c in "ogs")
    thread = chat.threads.create_thread(owner.user_id, "").thread_id
    chat.threads.join(thread, guest.user_id)
    assert [m.user_id for m in chat.threads.members(thread)] == [owner.user_id, guest.user_id]
    assert chat.threads.is_member(thread, guest.user_id)
    assert not chat.threads.is_member(thread, stranger.user_id)
    ThreadMember.update(joined_at=0).where(ThreadMember.user == guest.user_id).execute()
    assert [m.user_id for m in chat.threads.members(thread)] == [guest.user_id, owner.user_id]
    assert [m.name for m in chat.threads.members(thread)] == [guest.name, owner.name]
