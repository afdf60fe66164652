"""Users, browser sessions, threads and messages. Synchronous: call through the executor."""

import random
import uuid
from dataclasses import dataclass
from typing import Any

import peewee as pw

from coordinator.db import sql
from coordinator.db.database import write_transaction
from coordinator.db.tables import (
    BrowserSession,
    Job,
    Message,
    Thread,
    ThreadMember,
    User,
    now,
)
from coordinator.db.views import message_view, thread_view
from coordinator.errors import Busy, Conflict, NotFound, RateLimited
from coordinator.jobs.fairness import positions
from coordinator.jobs.store import queued_in_order
from coordinator.keys.api_keys import ApiKeyInfo
from coordinator.keys.hashing import hash_session_token
from farm_protocol.chat import (
    MAX_THREAD_MEMBERS,
    PAGE_SIZE,
    MemberView,
    MessagePage,
    MessageState,
    MessageView,
    ThreadSnapshot,
    ThreadView,
    UserView,
)

RETRYABLE_STATES = (
    MessageState.FAILED.value,
    MessageState.TIMED_OUT.value,
    MessageState.CANCELLED.value,
)

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


def _new_id() -> str:
    return uuid.uuid4().hex


def random_name(other_than: str = "") -> str:
    while True:
        emoji, animal = random.choice(_ANIMALS)
        if f"{emoji} {animal}" != other_than:
            return f"{emoji} {animal}"


@dataclass(frozen=True, slots=True)
class NewReply:
    """What sending a message created."""

    user_message: MessageView
    reply: MessageView
    job_id: str
    joined: bool = False  # the sender became a member of the thread by sending


class ChatStore:
    def __init__(self, db: pw.Database) -> None:
        self.db = db

    def find_user(self, token: str) -> UserView | None:
        """The user behind a browser session token, or None for a session never seen."""
        token_hash = hash_session_token(token)
        row = (
            BrowserSession.select(BrowserSession.last_seen, User.id, User.name)
            .join(User)
            .where(BrowserSession.token_hash == token_hash)
            .tuples()
            .first()
        )
        if row is None:
            return None
        last_seen, user_id, name = row
        stamp = now()
        if last_seen < stamp - 60:  # a write per minute, not per request
            BrowserSession.update(last_seen=stamp).where(
                BrowserSession.token_hash == token_hash
            ).execute()
        return UserView(user_id=user_id, name=name)

    def session_user(self, token: str) -> UserView:
        """The user behind a browser session token, created on first use."""
        found = self.find_user(token)
        if found is not None:
            return found
        with self._write():
            # a page's first requests can reach several coordinators at once
            sql.name_lock(self.db, f"browser session {hash_session_token(token)}")
            found = self.find_user(token)  # made meanwhile by another process
            if found is not None:
                return found
            user = User.create(id=_new_id(), name=random_name())
            BrowserSession.create(token_hash=hash_session_token(token), user=user)
        return UserView(user_id=user.id, name=user.name)

    def rename(self, user_id: str) -> tuple[UserView, list[str]]:
        """Give the user a new random name; also the threads whose member lists changed
        (the 50 most recently active: older ones show the new name when next opened)."""
        with self._write():
            user = User.get_by_id(user_id)
            user.name = random_name(other_than=user.name)
            user.save()
        threads = [
            row.thread_id
            for row in ThreadMember.select(ThreadMember.thread)
            .join(Thread)
            .where(ThreadMember.user == user_id)
            .order_by(Thread.updated_at.desc())
            .limit(50)
        ]
        return UserView(user_id=user.id, name=user.name), threads

    def create_thread(self, user_id: str, system_prompt: str) -> ThreadView:
        with self._write():
            thread = Thread.create(id=_new_id(), created_by=user_id)
            ThreadMember.create(thread=thread, user=user_id)
            if system_prompt.strip():
                Message.create(
                    id=_new_id(),
                    thread=thread,
                    user=user_id,
                    role="system",
                    author="system",
                    content=system_prompt.strip(),
                    state=MessageState.DONE.value,
                )
        return thread_view(thread)

    def list_threads(self, user_id: str, limit: int = 100) -> list[ThreadView]:
        rows = (
            Thread.select()
            .join(ThreadMember)
            .where(ThreadMember.user == user_id)
            .order_by(Thread.updated_at.desc())
            .limit(limit)
        )
        return [thread_view(row) for row in rows]

    def snapshot(
        self, thread_id: str, viewer: str | None = None, limit: int = PAGE_SIZE
    ) -> ThreadSnapshot:
        """The thread, its members and its latest ``limit`` messages, as ``viewer`` (a
        user id, or None for someone who has never written) sees it."""
        thread = Thread.get_or_none(Thread.id == thread_id)
        if thread is None:
            raise NotFound(f"no thread {thread_id}")
        page = self._page(thread_id, None, limit)
        members = self.members(thread_id)
        return ThreadSnapshot(
            thread=thread_view(thread),
            messages=self._live_views(page.messages),
            members=members,
            has_more=page.has_more,
            member=any(m.user_id == viewer for m in members),
        )

    def older_messages(self, thread_id: str, before: str, limit: int = PAGE_SIZE) -> MessagePage:
        """The ``limit`` messages before message ``before``, oldest first."""
        if not Thread.select().where(Thread.id == thread_id).exists():
            raise NotFound(f"no thread {thread_id}")
        page = self._page(thread_id, before, limit)
        return MessagePage(messages=self._live_views(page.messages), has_more=page.has_more)

    def _page(self, thread_id: str, before: str | None, limit: int) -> MessagePage:
        query = Message.select().where(Message.thread == thread_id)
        if before is not None:
            anchor = Message.get_or_none((Message.id == before) & (Message.thread == thread_id))
            if anchor is None:
                raise NotFound(f"no message {before} in thread {thread_id}")
            query = query.where(
                (Message.created_at < anchor.created_at)
                | ((Message.created_at == anchor.created_at) & (Message.id < anchor.id))
            )
        rows = list(query.order_by(Message.created_at.desc(), Message.id.desc()).limit(limit + 1))
        views = [message_view(r) for r in reversed(rows[:limit])]
        return MessagePage(messages=views, has_more=len(rows) > limit)

    @staticmethod
    def _live_views(views: list[MessageView]) -> list[MessageView]:
        """Add who holds each live reply's job, and each queued reply's queue position."""
        live = [v.job_id for v in views if v.job_id and not v.state.final]
        if live:
            held = {
                str(job.id): {"worker_id": job.worker_id, "attempt": job.attempt}
                for job in Job.select(Job.id, Job.worker_id, Job.attempt).where(
                    Job.id.in_(live) & Job.state.in_(("assigned", "running"))
                )
            }
            views = [v.model_copy(update=held[v.job_id]) if v.job_id in held else v for v in views]
        if any(v.state is MessageState.QUEUED for v in views):
            places = positions(queued_in_order())
            views = [
                v.model_copy(update={"queue_position": places.get(v.job_id or "")})
                if v.state is MessageState.QUEUED
                else v
                for v in views
            ]
        return views

    def members(self, thread_id: str) -> list[MemberView]:
        rows = (
            User.select(User.id, User.name)
            .join(ThreadMember)
            .where(ThreadMember.thread == thread_id)
            .order_by(ThreadMember.joined_at, User.id)
        )
        return [MemberView(user_id=row.id, name=row.name) for row in rows]

    def is_member(self, thread_id: str, user_id: str) -> bool:
        return bool(
            ThreadMember.select()
            .where((ThreadMember.thread == thread_id) & (ThreadMember.user == user_id))
            .exists()
        )

    def join(self, thread_id: str, user_id: str) -> list[MemberView]:
        """Make the user a member (at most ``MAX_THREAD_MEMBERS``); the members after."""
        with self._write():
            self._lock_thread(thread_id)
            self._join(thread_id, user_id)
        return self.members(thread_id)

    def leave(self, thread_id: str, user_id: str) -> list[MemberView]:
        """Stop being a member (the thread leaves the user's list); the members after."""
        if not Thread.select().where(Thread.id == thread_id).exists():
            raise NotFound(f"no thread {thread_id}")
        ThreadMember.delete().where(
            (ThreadMember.thread == thread_id) & (ThreadMember.user == user_id)
        ).execute()
        return self.members(thread_id)

    def message(self, message_id: str) -> MessageView:
        row = Message.get_or_none(Message.id == message_id)
        if row is None:
            raise NotFound(f"no message {message_id}")
        return message_view(row)

    def send_message(
        self,
        user_id: str,
        thread_id: str,
        text: str,
        model: str,
        *,
        api_key: ApiKeyInfo | None = None,
        max_queued: int | None = None,
    ) -> NewReply:
        """Store the user's message, an empty reply in ``queued`` and its job, atomically.

        A chat user has one reply generating at a time; an API key up to its limit. With
        ``max_queued``, a full queue refuses the message (:class:`Busy`). (Hand-written
        statements: this runs for every message; see coordinator.db.sql.)"""
        with self._write():
            description = self._lock_thread(thread_id)
            name = self._lock_user(user_id)
            self._admit(user_id, api_key, max_queued)
            joined = self._join(thread_id, user_id)
            new = self._queue_reply(thread_id, user_id, name, text, model, api_key, now())
            if description:
                sql.execute(
                    self.db,
                    "UPDATE thread SET updated_at = %s WHERE id = %s",
                    (new.user_message.created_at, thread_id),
                )
            else:  # the first message names the thread
                sql.execute(
                    self.db,
                    "UPDATE thread SET updated_at = %s, description = %s, title = %s WHERE id = %s",
                    (new.user_message.created_at, text[:200], text[:60], thread_id),
                )
        return NewReply(new.user_message, new.reply, new.job_id, joined)

    def start_api_conversation(
        self,
        api_key: ApiKeyInfo,
        model: str,
        turns: list[tuple[str, str]],
        *,
        max_queued: int | None = None,
    ) -> NewReply:
        """A programmatic request (OpenAI-style ``messages``) as a thread of its own, owned
        by the key's user: the earlier turns as history, the last user turn as the
        message, and a queued reply (its job counts against the key's limit)."""
        if not turns or turns[-1][0] != "user":
            raise ValueError("messages must end with a user message")
        user_id, question = api_key.user_id, turns[-1][1]
        with self._write():
            name = self._lock_user(user_id)
            self._admit(user_id, api_key, max_queued)
            stamp = now()
            thread_id = _new_id()
            sql.execute(
                self.db,
                "INSERT INTO thread (id, title, description, created_by_id, created_at,"
                " updated_at) VALUES (%s, %s, %s, %s, %s, %s)",
                (thread_id, question[:60], question[:200], user_id, stamp, stamp),
            )
            sql.execute(
                self.db,
                "INSERT INTO thread_member (thread_id, user_id, joined_at) VALUES (%s, %s, %s)",
                (thread_id, user_id, stamp),
            )
            history = [  # the history comes before the question
                self._row(thread_id, user_id, role, role, content, stamp - 1.0 + i * 1e-3)
                for i, (role, content) in enumerate(turns[:-1])
            ]
            return self._queue_reply(
                thread_id, user_id, name, question, model, api_key, stamp, history
            )

    def _write(self) -> pw._atomic:
        return write_transaction(self.db)

    @staticmethod
    def _row(
        thread_id: str,
        user_id: str,
        role: str,
        author: str,
        content: str,
        created_at: float,
        *,
        state: MessageState = MessageState.DONE,
        model: str | None = None,
        job_id: str | None = None,
    ) -> dict[str, Any]:
        return {
            "id": _new_id(),
            "thread_id": thread_id,
            "user_id": user_id,
            "role": role,
            "author": author,
            "content": content,
            "state": state.value,
            "model": model,
            "job_id": job_id,
            "created_at": created_at,
        }

    def _lock_thread(self, thread_id: str) -> str:
        """The thread's description, its row locked for this write transaction: its
        members and replies are checked and changed one transaction at a time, in every
        coordinator (``sql.row_lock``). A thread is locked before a user."""
        found = sql.execute(
            self.db,
            "SELECT description FROM thread WHERE id = %s" + sql.row_lock(self.db),
            (thread_id,),
        ).fetchone()
        if found is None:
            raise NotFound(f"no thread {thread_id}")
        return str(found[0] or "")

    def _lock_user(self, user_id: str) -> str:
        """The user's name, their row locked for this write transaction: their limits
        are checked and their replies queued one transaction at a time."""
        found = sql.execute(
            self.db, 'SELECT name FROM "user" WHERE id = %s' + sql.row_lock(self.db), (user_id,)
        ).fetchone()
        if found is None:
            raise NotFound(f"no user {user_id}")
        return str(found[0])

    def _queue_reply(
        self,
        thread_id: str,
        user_id: str,
        name: str,
        text: str,
        model: str,
        api_key: ApiKeyInfo | None,
        stamp: float,
        history: list[dict[str, Any]] | None = None,
    ) -> NewReply:
        """Insert (after ``history``) the user's message, its empty reply and the job."""
        job_id = _new_id()
        mine = self._row(thread_id, user_id, "user", name, text, stamp)
        reply = self._row(
            thread_id,
            user_id,
            "assistant",
            model,
            "",
            stamp + 1e-6,
            state=MessageState.QUEUED,
            model=model,
            job_id=job_id,
        )
        sql.insert_messages(self.db, [*(history or []), mine, reply])
        sql.execute(
            self.db,
            "INSERT INTO job (id, message_id, user_id, model, state, attempt, chunks,"
            " api_key_id, created_at) VALUES (%s, %s, %s, %s, 'queued', 0, 0, %s, %s)",
            (job_id, reply["id"], user_id, model, api_key.id if api_key else None, stamp),
        )
        return NewReply(sql.inserted_view(mine), sql.inserted_view(reply), job_id, False)

    def retry_reply(
        self, user_id: str, thread_id: str, message_id: str, *, max_queued: int | None = None
    ) -> MessageView:
        """Generate a reply that failed, timed out or was stopped once more, as a new job
        (the earlier jobs stay on record). The same limits apply as to sending."""
        with self._write():
            self._lock_thread(thread_id)
            reply = Message.get_or_none(
                (Message.id == message_id)
                & (Message.thread == thread_id)
                & (Message.role == "assistant")
            )
            member = ThreadMember.select().where(
                (ThreadMember.thread == thread_id) & (ThreadMember.user == user_id)
            )
            if reply is None or not member.exists():
                raise NotFound(f"no reply {message_id} in thread {thread_id}")
            if reply.state not in RETRYABLE_STATES:
                raise Conflict(
                    f"only a failed, timed out or stopped reply can be retried ({reply.state})"
                )
            self._lock_user(user_id)
            self._admit(user_id, None, max_queued)
            stamp = now()
            job_id = _new_id()
            Job.create(id=job_id, message=reply, user=user_id, model=reply.model, state="queued")
            Message.update(
                job_id=job_id,
                state=MessageState.QUEUED.value,
                content="",
                content_seq=-1,
                error=None,
                updated_at=stamp,
            ).where(Message.id == message_id).execute()
            Thread.update(updated_at=stamp).where(Thread.id == thread_id).execute()
        return message_view(Message.get_by_id(message_id))

    def reply_model(self, thread_id: str, message_id: str) -> str:
        reply = Message.get_or_none((Message.id == message_id) & (Message.thread == thread_id))
        if reply is None or reply.model is None:
            raise NotFound(f"no reply {message_id} in thread {thread_id}")
        return str(reply.model)

    def job_to_stop(self, user_id: str, thread_id: str, message_id: str) -> str:
        """The job behind a reply that a member of its thread wants to stop."""
        message = Message.get_or_none((Message.id == message_id) & (Message.thread == thread_id))
        if message is None or message.job_id is None:
            raise NotFound(f"no reply {message_id} in thread {thread_id}")
        member = ThreadMember.select().where(
            (ThreadMember.thread == thread_id) & (ThreadMember.user == user_id)
        )
        if not member.exists():
            raise NotFound(f"no reply {message_id} in thread {thread_id}")
        if message.state not in (MessageState.QUEUED.value, MessageState.GENERATING.value):
            raise Conflict(f"this reply has already ended ({message.state})")
        return str(message.job_id)

    def _admit(self, user_id: str, api_key: ApiKeyInfo | None, max_queued: int | None) -> None:
        """The per-client limits, and the bound on the queue (one statement)."""
        mine, queued = sql.execute(
            self.db,
            "SELECT (SELECT COUNT(*) FROM job WHERE "
            + ("api_key_id" if api_key else "user_id")
            + " = %s AND state IN ('queued', 'assigned', 'running')),"
            " (SELECT COUNT(*) FROM job WHERE state = 'queued')",
            (api_key.id if api_key else user_id,),
        ).fetchone()
        if api_key is None:
            if mine:
                raise Conflict("a reply to your previous message is still being generated")
        elif mine >= api_key.max_concurrent:
            raise RateLimited(f"this API key has {mine} replies in progress, its limit", 2.0)
        if max_queued is not None and queued >= max_queued:
            raise Busy(f"the farm's queue is full ({queued} requests waiting)", 10.0, "queue_full")

    def _join(self, thread_id: str, user_id: str) -> bool:
        """Add the member unless already there; True when added."""
        members, mine = sql.execute(
            self.db,
            "SELECT COUNT(*), COUNT(CASE WHEN user_id = %s THEN 1 END) FROM thread_member"
            " WHERE thread_id = %s",
            (user_id, thread_id),
        ).fetchone()
        if mine:
            return False
        if members >= MAX_THREAD_MEMBERS:
            raise Conflict(f"this thread already has {MAX_THREAD_MEMBERS} members")
        sql.execute(
            self.db,
            "INSERT INTO thread_member (thread_id, user_id, joined_at) VALUES (%s, %s, %s)",
            (thread_id, user_id, now()),
        )
        return True
