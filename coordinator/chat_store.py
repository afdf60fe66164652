"""Users, browser sessions, threads and messages. Synchronous: call through the executor."""

import random
import uuid
from dataclasses import dataclass

import peewee as pw

from coordinator.api_keys import ACTIVE_JOB_STATES, ApiKeyInfo
from coordinator.errors import Busy, Conflict, NotFound, RateLimited
from coordinator.fairness import positions
from coordinator.job_store import queued_in_order
from coordinator.keys import hash_session_token
from coordinator.tables import (
    BrowserSession,
    Job,
    Message,
    Thread,
    ThreadMember,
    User,
    now,
)
from coordinator.views import message_view, thread_view
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
        with self.db.atomic():
            found = self.find_user(token)
            if found is not None:
                return found
            user = User.create(id=_new_id(), name=random_name())
            BrowserSession.create(token_hash=hash_session_token(token), user=user)
        return UserView(user_id=user.id, name=user.name)

    def rename(self, user_id: str) -> tuple[UserView, list[str]]:
        """Give the user a new random name; also the threads whose member lists changed
        (the 50 most recently active: older ones show the new name when next opened)."""
        with self.db.atomic():
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
        with self.db.atomic():
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
        with self.db.atomic():
            if not Thread.select().where(Thread.id == thread_id).exists():
                raise NotFound(f"no thread {thread_id}")
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
        ``max_queued``, a full queue refuses the message (:class:`Busy`)."""
        with self.db.atomic():
            thread = Thread.get_or_none(Thread.id == thread_id)
            if thread is None:
                raise NotFound(f"no thread {thread_id}")
            user = User.get_by_id(user_id)
            self._admit(user_id, api_key, max_queued)
            joined = self._join(thread_id, user_id)
            stamp = now()
            mine = Message.create(
                id=_new_id(),
                thread=thread_id,
                user=user_id,
                role="user",
                author=user.name,
                content=text,
                state=MessageState.DONE.value,
                created_at=stamp,
            )
            job_id = _new_id()
            reply = Message.create(
                id=_new_id(),
                thread=thread_id,
                user=user_id,
                role="assistant",
                author=model,
                state=MessageState.QUEUED.value,
                model=model,
                job_id=job_id,
                created_at=stamp + 1e-6,
            )
            Job.create(
                id=job_id,
                message=reply,
                user=user_id,
                api_key_id=api_key.id if api_key else None,
                model=model,
                state="queued",
            )
            updates: dict[pw.Field, object] = {Thread.updated_at: stamp}
            if not thread.description:
                updates[Thread.description] = text[:200]
                updates[Thread.title] = text[:60]
            Thread.update(updates).where(Thread.id == thread_id).execute()
        return NewReply(message_view(mine), message_view(reply), job_id, joined)

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
        with self.db.atomic():
            thread = Thread.create(id=_new_id(), created_by=api_key.user_id, title="API request")
            ThreadMember.create(thread=thread, user=api_key.user_id)
            stamp = now() - 1.0  # the history comes before the question
            for i, (role, content) in enumerate(turns[:-1]):
                Message.create(
                    id=_new_id(),
                    thread=thread,
                    user=api_key.user_id,
                    role=role,
                    author=role,
                    content=content,
                    state=MessageState.DONE.value,
                    created_at=stamp + i * 1e-3,
                )
            return self.send_message(
                api_key.user_id,
                thread.id,
                turns[-1][1],
                model,
                api_key=api_key,
                max_queued=max_queued,
            )

    def retry_reply(
        self, user_id: str, thread_id: str, message_id: str, *, max_queued: int | None = None
    ) -> MessageView:
        """Generate a reply that failed, timed out or was stopped once more, as a new job
        (the earlier jobs stay on record). The same limits apply as to sending."""
        with self.db.atomic():
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

    @staticmethod
    def _admit(user_id: str, api_key: ApiKeyInfo | None, max_queued: int | None) -> None:
        """The per-client limits, and the bound on the queue."""
        active = Job.state.in_(ACTIVE_JOB_STATES)
        if api_key is None:
            if Job.select().where((Job.user == user_id) & active).exists():
                raise Conflict("a reply to your previous message is still being generated")
        else:
            running = Job.select().where((Job.api_key_id == api_key.id) & active).count()
            if running >= api_key.max_concurrent:
                raise RateLimited(f"this API key has {running} replies in progress, its limit", 2.0)
        if max_queued is not None:
            queued = Job.select().where(Job.state == "queued").count()
            if queued >= max_queued:
                raise Busy(
                    f"the farm's queue is full ({queued} requests waiting)", 10.0, "queue_full"
                )

    def _join(self, thread_id: str, user_id: str) -> bool:
        """Add the member unless already there; True when added."""
        if self.is_member(thread_id, user_id):
            return False
        members = ThreadMember.select().where(ThreadMember.thread == thread_id).count()
        if members >= MAX_THREAD_MEMBERS:
            raise Conflict(f"this thread already has {MAX_THREAD_MEMBERS} members")
        ThreadMember.create(thread=thread_id, user=user_id)
        return True
