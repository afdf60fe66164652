"""Who is chatting: a browser session's user, made on first use with a random animal
name (the original's), and a new name on request."""

import random

import peewee as pw

from coordinator.chat import statements as q
from coordinator.db import sql
from coordinator.db.database import write_transaction
from coordinator.db.tables import BrowserSession, Thread, ThreadMember, User, new_id, now
from coordinator.keys.hashing import hash_session_token
from farm_protocol.chat import UserView

_ANIMALS = [
    ("🦙", "Llama"),
    ("🦊", "Fox"),
    ("🐙", "Octopus"),
    ("🦉", "Owl"),
    ("🐢", "Turtle"),
    ("🦔", "Hedgehog"),
    ("🐧", "Penguin"),
    ("🦦", "Otter"),
    ("🐝", "Bee"),
    ("🦜", "Parrot"),
    ("🐳", "Whale"),
    ("🦥", "Sloth"),
    ("🐼", "Panda"),
    ("🦩", "Flamingo"),
    ("🐸", "Frog"),
]


def random_name(other_than: str = "") -> str:
    while True:
        emoji, animal = random.choice(_ANIMALS)
        if f"{emoji} {animal}" != other_than:
            return f"{emoji} {animal}"


class IdentityStore:
    def __init__(self, db: pw.Database) -> None:
        self.db = db

    def find_user(self, token: str) -> UserView | None:
        """The user behind a browser session token, or None for a session never seen
        (every chat request asks: a hand-written statement)."""
        token_hash = hash_session_token(token)
        row = sql.execute(self.db, q.SESSION_USER, (token_hash,)).fetchone()
        if row is None:
            return None
        last_seen, user_id, name = row
        stamp = now()
        if last_seen < stamp - 60:  # a write per minute, not per request
            sql.execute(self.db, q.SESSION_SEEN, (stamp, token_hash))
        return UserView(user_id=user_id, name=name)

    def session_user(self, token: str) -> UserView:
        """The user behind a browser session token, created on first use."""
        found = self.find_user(token)
        if found is not None:
            return found
        with write_transaction(self.db):
            # a page's first requests can reach several coordinators at once
            sql.name_lock(self.db, f"browser session {hash_session_token(token)}")
            found = self.find_user(token)  # made meanwhile by another process
            if found is not None:
                return found
            user = UserView(user_id=new_id(), name=random_name())
            User.insert(id=user.user_id, name=user.name).execute(self.db)
            session = BrowserSession.insert(token_hash=hash_session_token(token), user=user.user_id)
            session.execute(self.db)
        return user

    def rename(self, user_id: str) -> tuple[UserView, list[str]]:
        """Give the user a new random name; also the threads whose member lists changed
        (the 50 most recently active: older ones show the new name when next opened)."""
        with write_transaction(self.db):
            old = User.select(User.name).where(User.id == user_id).get(self.db).name
            renamed = UserView(user_id=user_id, name=random_name(other_than=old))
            User.update(name=renamed.name).where(User.id == user_id).execute(self.db)
        recent = (
            ThreadMember.select(ThreadMember.thread)
            .join(Thread)
            .where(ThreadMember.user == user_id)
            .order_by(Thread.updated_at.desc())
            .limit(50)
        )
        return renamed, [row.thread_id for row in recent.execute(self.db)]
