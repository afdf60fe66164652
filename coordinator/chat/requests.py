"""Requests for replies: a chat message sent, a programmatic request, a failed reply
retried. This is the only writer of new job rows. Each request is one write transaction
that checks the sender's limits and the queue's bound, then stores the message, its
empty reply and the reply's queued job together."""

import json
from dataclasses import dataclass, replace
from typing import Any, cast

import peewee as pw

from coordinator.chat import statements as q
from coordinator.chat.threads import join_thread, lock_thread, with_versions
from coordinator.db import sql
from coordinator.db.database import write_transaction
from coordinator.db.tables import Message, ThreadMember, new_id, now
from coordinator.db.views import message_fields, message_view, views_of
from coordinator.errors import Busy, Conflict, Forbidden, NotFound, RateLimited
from coordinator.jobs.capacity import AdmitLimit, no_worker
from coordinator.keys.api_keys import ApiKeyInfo
from coordinator.workers.presence import model_names
from coordinator.workers.statements import AVAILABLE
from farm_protocol.chat import MessageState, MessageView
from farm_protocol.models import normalize_model
from farm_protocol.payloads import ChatTurn, Generation

# A reply that ended may be generated again (a good one too: "regenerate"); one still
# queued or generating may not.
RETRYABLE_STATES = (
    MessageState.DONE.value,
    MessageState.FAILED.value,
    MessageState.TIMED_OUT.value,
    MessageState.CANCELLED.value,
)


@dataclass(frozen=True, slots=True)
class NewReply:
    """What sending a message created."""

    user_message: MessageView
    reply: MessageView
    job_id: str
    joined: bool = False  # the sender became a member of the thread by sending


# The columns of a message row as :meth:`RequestStore._row` holds them, in the order of
# INSERT_MESSAGES (the last value, updated_at, is created_at again).
_INSERTED = (
    "id",
    "thread_id",
    "user_id",
    "parent_id",
    "role",
    "author",
    "content",
    "state",
    "model",
    "job_id",
    "created_at",
)


def _recorded(turn: ChatTurn) -> tuple[str, str]:
    """How the thread records an API request's turn: a tool's result as a user message
    that names the tool, an assistant's tool calls as the calls in words."""
    if turn.role == "tool":
        return "user", f"[{turn.tool_name or 'tool'} returned] {turn.content}"
    calls = "; ".join(f"{c.name}({json.dumps(c.arguments)})" for c in turn.tool_calls)
    return turn.role, f"{turn.content}\n[called {calls}]".strip() if calls else turn.content


def _inserted_view(row: dict[str, Any]) -> MessageView:
    """The view of a message just inserted (no chunk applied, no error)."""
    columns = ("id", "thread_id", "role", "author", "content", "state", "model", "job_id")
    return message_view(
        [
            *(row[c] for c in columns),
            -1,
            None,
            row["created_at"],
            *[None] * 6,
            row["user_id"],
            row["parent_id"],
        ]
    )


def _chained(rows: list[dict[str, Any]], parent_id: str | None) -> list[dict[str, Any]]:
    """``rows`` as one branch after ``parent_id``: each follows the one before."""
    for row in rows:
        row["parent_id"] = parent_id
        parent_id = row["id"]
    return rows


class RequestStore:
    def __init__(
        self,
        db: pw.Database,
        *,
        grace_s: float = 10.0,
        key_backlog: int = 4,
        chat_backlog: int = 3,
    ) -> None:
        self.db = db
        self.grace_s = grace_s  # a worker silent this long is not online
        # An API key's requests beyond its concurrency wait in the queue (the dispatcher
        # starts at most max_concurrent of them at once), up to this many per slot more.
        self.key_backlog = key_backlog
        # A chat user's replies run one at a time (the dispatcher starts one); messages
        # sent meanwhile wait behind it, up to this many.
        self.chat_backlog = chat_backlog

    def send_message(
        self,
        user_id: str,
        thread_id: str,
        text: str,
        model: str,
        *,
        api_key: ApiKeyInfo | None = None,
        max_queued: int | None = None,
        limit: AdmitLimit | None = None,
    ) -> NewReply:
        """Store the user's message, an empty reply in ``queued`` and its job, atomically.

        A chat user has one reply generating at a time, and up to ``chat_backlog`` more
        waiting behind it (each answered after the one before, with it in its context);
        an API key up to its limit. With
        ``max_queued``, a full queue refuses the message (:class:`Busy`). (Hand-written
        statements: this runs for every message; see coordinator.chat.statements.)"""
        with write_transaction(self.db):
            description, leaf = lock_thread(self.db, thread_id)
            name = self._lock_user(user_id)
            self._admit(user_id, api_key, max_queued, limit, model)
            joined = join_thread(self.db, thread_id, user_id)
            stamp = now()
            new = self._queue_reply(thread_id, user_id, name, text, model, api_key, stamp, leaf)
            reply_id = new.reply.message_id
            if description:
                sql.execute(self.db, q.THREAD_GREW, (stamp, reply_id, thread_id))
            else:  # the first message names the thread
                named = (stamp, reply_id, text[:200], text[:60], thread_id)
                sql.execute(self.db, q.THREAD_NAMED, named)
        return NewReply(new.user_message, new.reply, new.job_id, joined)

    def edit_message(
        self,
        user_id: str,
        thread_id: str,
        message_id: str,
        text: str,
        model: str,
        *,
        max_queued: int | None = None,
        limit: AdmitLimit | None = None,
    ) -> NewReply:
        """A new version of the user's own message: a sibling of it (the same parent),
        with a queued reply, which the thread now shows; the earlier version and what
        followed it stay, one branch beside. The same limits apply as to sending."""
        with write_transaction(self.db):
            lock_thread(self.db, thread_id)
            edited = self._message(thread_id, message_id)
            if edited is None or edited.role != "user":
                raise NotFound(f"no message {message_id} of yours in thread {thread_id}")
            if edited.user_id != user_id:
                raise Forbidden("only its author may edit a message")
            name = self._lock_user(user_id)
            self._admit(user_id, None, max_queued, limit, model)
            stamp = now()
            parent = edited.parent_id
            new = self._queue_reply(thread_id, user_id, name, text, model, None, stamp, parent)
            sql.execute(self.db, q.THREAD_GREW, (stamp, new.reply.message_id, thread_id))
            # its watchers are told of it as a snapshot shows it: with its versions
            shown = with_versions(self.db, thread_id, [new.user_message])[0]
        return replace(new, user_message=shown)

    def start_api_conversation(
        self,
        api_key: ApiKeyInfo,
        model: str,
        generation: Generation,
        *,
        max_queued: int | None = None,
        limit: AdmitLimit | None = None,
        thread_id: str | None = None,
    ) -> NewReply:
        """A programmatic request (OpenAI-style ``messages``) as a thread of its own, owned
        by the key's user: the earlier turns as history, the last turn as the message,
        and a queued reply (its job counts against the key's limit). The job keeps the
        request (``generation``): its context is exactly the turns the client sent, tool
        calls and results included, which the thread records as text.
        ``thread_id``: the new thread's id, chosen by the webapp so that it can subscribe
        to the thread's events before the request is queued."""
        turns = [_recorded(t) for t in generation.messages]
        if generation.task == "embed":
            first, more = generation.inputs[0], len(generation.inputs) - 1
            turns = [("user", f"[embed] {first}" + (f" (and {more} more)" if more else ""))]
        elif not turns or generation.messages[-1].role not in ("user", "tool"):
            raise ValueError("messages must end with a user or tool message")
        user_id, question = api_key.user_id, turns[-1][1]
        with write_transaction(self.db):
            name = self._lock_user(user_id)
            self._admit(user_id, api_key, max_queued, limit, model)
            stamp = now()
            thread_id = thread_id or new_id()
            thread = (thread_id, question[:60], question[:200], user_id, stamp, stamp)
            sql.execute(self.db, q.NEW_THREAD, thread)
            sql.execute(self.db, q.ADD_MEMBER, (thread_id, user_id, stamp))
            history = [  # the history comes before the question
                self._row(thread_id, user_id, role, role, content, stamp - 1.0 + i * 1e-3)
                for i, (role, content) in enumerate(turns[:-1])
            ]
            new = self._queue_reply(
                thread_id,
                user_id,
                name,
                question,
                model,
                api_key,
                stamp,
                None,
                history,
                request=generation.model_dump_json(exclude_defaults=True),
            )
            sql.execute(self.db, q.SET_LEAF, (new.reply.message_id, thread_id))
            return new

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
            "id": new_id(),
            "thread_id": thread_id,
            "user_id": user_id,
            "parent_id": None,  # see _chained
            "role": role,
            "author": author,
            "content": content,
            "state": state.value,
            "model": model,
            "job_id": job_id,
            "created_at": created_at,
        }

    def _lock_user(self, user_id: str) -> str:
        """The user's name, their row locked for this write transaction: their limits
        are checked and their replies queued one transaction at a time."""
        found = sql.execute(self.db, q.LOCK_USER + sql.row_lock(self.db), (user_id,)).fetchone()
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
        parent_id: str | None,
        history: list[dict[str, Any]] | None = None,
        *,
        request: str | None = None,
    ) -> NewReply:
        """Insert the user's message, its empty reply and the job (with an API client's
        ``request``, see ``Generation``), as a branch after ``parent_id`` (``history``
        first). The caller makes the reply the thread's leaf when it should show."""
        job_id = new_id()
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
        self._insert_messages(_chained([*(history or []), mine, reply], parent_id))
        owner_key = api_key.id if api_key else None
        job = (job_id, reply["id"], user_id, model, owner_key, request, stamp)
        sql.execute(self.db, q.NEW_JOB, job)
        return NewReply(_inserted_view(mine), _inserted_view(reply), job_id, False)

    def _insert_messages(self, rows: list[dict[str, Any]]) -> None:
        """Insert messages (made by :meth:`_row`) in one statement."""
        params: list[Any] = []
        for r in rows:
            params += [r[c] for c in _INSERTED] + [r["created_at"]]
        values = ", ".join([q.MESSAGE_VALUES] * len(rows))
        sql.execute(self.db, q.INSERT_MESSAGES + values, params)

    def retry_reply(
        self,
        user_id: str,
        thread_id: str,
        message_id: str,
        *,
        max_queued: int | None = None,
        limit: AdmitLimit | None = None,
    ) -> MessageView:
        """Generate a reply that ended once more (failed, timed out, stopped, or a good one
        regenerated), as a new job from an empty text (the earlier jobs stay on record).
        The same limits apply as to sending."""
        with write_transaction(self.db):
            lock_thread(self.db, thread_id)
            reply = (
                Message.select()
                .where(
                    (Message.id == message_id)
                    & (Message.thread == thread_id)
                    & (Message.role == "assistant")
                )
                .first(self.db)
            )
            if reply is None or not self._member(thread_id, user_id):
                raise NotFound(f"no reply {message_id} in thread {thread_id}")
            if reply.state not in RETRYABLE_STATES:
                raise Conflict(f"only a reply that ended can be generated again ({reply.state})")
            self._lock_user(user_id)
            self._admit(user_id, None, max_queued, limit, str(reply.model))
            stamp = now()
            job_id = new_id()
            new_job = (job_id, message_id, user_id, reply.model, None, None, stamp)
            sql.execute(self.db, q.NEW_JOB, new_job)
            sql.execute(self.db, q.REPLY_REQUEUED, (job_id, stamp, message_id))
            sql.execute(self.db, q.THREAD_ACTIVE, (stamp, thread_id))
            query = Message.select(*message_fields()).where(Message.id == message_id)
            (view,) = views_of(self.db, query)
            return view

    def _message(self, thread_id: str, message_id: str) -> Message | None:
        where = (Message.id == message_id) & (Message.thread == thread_id)
        return cast(Message | None, Message.select().where(where).first(self.db))

    def _member(self, thread_id: str, user_id: str) -> bool:
        where = (ThreadMember.thread == thread_id) & (ThreadMember.user == user_id)
        return bool(ThreadMember.select().where(where).exists(self.db))

    def reply_model(self, thread_id: str, message_id: str) -> str:
        reply = self._message(thread_id, message_id)
        if reply is None or reply.model is None:
            raise NotFound(f"no reply {message_id} in thread {thread_id}")
        return str(reply.model)

    def job_to_stop(self, user_id: str, thread_id: str, message_id: str) -> str:
        """The job behind a reply that a member of its thread wants to stop."""
        message = self._message(thread_id, message_id)
        if message is None or message.job_id is None:
            raise NotFound(f"no reply {message_id} in thread {thread_id}")
        if not self._member(thread_id, user_id):
            raise NotFound(f"no reply {message_id} in thread {thread_id}")
        if message.state not in (MessageState.QUEUED.value, MessageState.GENERATING.value):
            raise Conflict(f"this reply has already ended ({message.state})")
        return str(message.job_id)

    def _admit(
        self,
        user_id: str,
        api_key: ApiKeyInfo | None,
        max_queued: int | None,
        limit: AdmitLimit | None,
        model: str,
    ) -> None:
        """The per-client limits, and the bounds on the queue: the farm's, and the
        model's by expected wait (one statement)."""
        owner = "api_key_id" if api_key else "user_id"
        who = api_key.id if api_key else user_id
        count = q.OWNER_AND_QUEUE.format(owner=owner)
        mine, queued, for_model = sql.execute(self.db, count, (who, model)).fetchone()
        if _near(queued, max_queued) or (limit and _near(for_model, limit.most_queued)):
            # Coordinators admitting at the same moment each count without the others'
            # requests: near a bound, they take turns (and count again), so it holds
            # exactly across processes. Far from it, nobody waits.
            sql.name_lock(self.db, QUEUE_BOUND_LOCK)
            mine, queued, for_model = sql.execute(self.db, count, (who, model)).fetchone()
        if api_key is None:
            if mine > self.chat_backlog:
                raise RateLimited(
                    f"you have {mine} replies generating or waiting, the most at once:"
                    " send more when one of them has finished",
                    2.0,
                )
        elif mine >= api_key.max_concurrent * (1 + self.key_backlog):
            raise RateLimited(
                f"this API key has {mine} requests in progress or waiting, its limit"
                f" ({api_key.max_concurrent} at once, {api_key.max_concurrent * self.key_backlog}"
                " more waiting)",
                2.0,
            )
        if max_queued is not None and queued >= max_queued:
            raise Busy(f"the farm's queue is full ({queued} requests waiting)", 10.0, "queue_full")
        if limit is not None:
            if not self._served(limit.model):
                raise no_worker(limit.model)
            limit.check(for_model)

    def _served(self, model: str) -> bool:
        """Whether an online worker (heartbeating, not revoked, not quarantined) serves
        ``model`` now."""
        stamp = now()
        wanted = normalize_model(model)
        rows = sql.execute(self.db, AVAILABLE, (stamp - self.grace_s, stamp))
        return any(wanted in model_names(models) for _, models, _, _ in rows)


QUEUE_BOUND_LOCK = "farm-queue-bounds"
# Requests admitted without the lock at the same moment, at most: one per coordinator
# (each runs its database work on one thread). Within this much of a bound, the lock.
ADMITTING_AT_ONCE = 32


def _near(count: int, bound: int | None) -> bool:
    return bound is not None and count >= bound - ADMITTING_AT_ONCE
