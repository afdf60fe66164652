"""Threads, their members, and reading their messages a page at a time (anyone with
a thread's link may read it: the original's sharing)."""

from typing import NamedTuple, cast

import peewee as pw

from coordinator.chat import statements as q
from coordinator.db import sql
from coordinator.db.database import write_transaction
from coordinator.db.tables import Job, Message, Thread, ThreadMember, new_id, now
from coordinator.db.views import message_fields, message_views, thread_view, views_of
from coordinator.errors import Conflict, Forbidden, NotFound
from coordinator.jobs.fairness import positions
from coordinator.jobs.queue import queued_in_order
from coordinator.jobs.states import LIVE
from farm_protocol.chat import (
    MAX_THREAD_MEMBERS,
    PAGE_SIZE,
    MemberView,
    MessagePage,
    MessageState,
    MessageView,
    ThreadSnapshot,
    ThreadView,
)


class LockedThread(NamedTuple):
    description: str
    leaf_id: str | None  # the latest message of the branch it shows


def with_versions(db: pw.Database, thread_id: str, views: list[MessageView]) -> list[MessageView]:
    """Name each edited message's versions (its siblings, itself among them), as every
    view of it does: a page, a snapshot, and the event of a new version."""
    parents = list({v.parent_id for v in views if v.role == "user" and v.parent_id})
    siblings: dict[str | None, list[str]] = {}
    rows = sql.execute_in(db, q.VERSIONS, parents or [""], (thread_id,))
    for parent, message_id in rows:
        siblings.setdefault(parent, []).append(str(message_id))
    return [
        v.model_copy(update={"versions": siblings[v.parent_id]})
        if v.role == "user" and len(siblings.get(v.parent_id, ())) > 1
        else v
        for v in views
    ]


def lock_thread(db: pw.Database, thread_id: str) -> LockedThread:
    """The thread's description and leaf, its row locked for this write transaction:
    its members and replies are checked and changed one transaction at a time, in every
    coordinator (``sql.row_lock``). A thread is locked before a user."""
    found = sql.execute(db, q.LOCK_THREAD + sql.row_lock(db), (thread_id,)).fetchone()
    if found is None:
        raise NotFound(f"no thread {thread_id}")
    return LockedThread(str(found[0] or ""), found[1])


def join_thread(db: pw.Database, thread_id: str, user_id: str) -> bool:
    """Add the member unless already there (inside a write transaction that locked the
    thread); True when added."""
    members, mine = sql.execute(db, q.MEMBERS_AND_ME, (user_id, thread_id)).fetchone()
    if mine:
        return False
    if members >= MAX_THREAD_MEMBERS:
        raise Conflict(f"this thread already has {MAX_THREAD_MEMBERS} members")
    sql.execute(db, q.ADD_MEMBER, (thread_id, user_id, now()))
    return True


class ThreadStore:
    def __init__(self, db: pw.Database) -> None:
        self.db = db

    def create_thread(self, user_id: str, system_prompt: str) -> ThreadView:
        with write_transaction(self.db):
            thread_id = new_id()
            Thread.insert(id=thread_id, created_by=user_id).execute(self.db)
            ThreadMember.insert(thread=thread_id, user=user_id).execute(self.db)
            if system_prompt.strip():
                prompt_id = new_id()
                Message.insert(
                    id=prompt_id,
                    thread=thread_id,
                    user=user_id,
                    role="system",
                    author="system",
                    content=system_prompt.strip(),
                    state=MessageState.DONE.value,
                ).execute(self.db)
                sql.execute(self.db, q.SET_LEAF, (prompt_id, thread_id))
            thread = Thread.select().where(Thread.id == thread_id).get(self.db)
        return thread_view(thread)

    def list_threads(self, user_id: str, limit: int = 100) -> list[ThreadView]:
        rows = (
            Thread.select()
            .join(ThreadMember)
            .where(ThreadMember.user == user_id)
            .order_by(Thread.updated_at.desc())
            .limit(limit)
        )
        found = list(rows.execute(self.db))
        counts = (
            ThreadMember.select(ThreadMember.thread, pw.fn.COUNT(ThreadMember.user))
            .where(ThreadMember.thread.in_([t.id for t in found]))
            .group_by(ThreadMember.thread)
            .tuples()
        )
        members = {str(thread): int(n) for thread, n in counts.execute(self.db)} if found else {}
        return [thread_view(row, members.get(row.id, 0)) for row in found]

    def snapshot(
        self, thread_id: str, viewer: str | None = None, limit: int = PAGE_SIZE
    ) -> ThreadSnapshot:
        """The thread, its members and its latest ``limit`` messages, as ``viewer`` (a
        user id, or None for someone who has never written) sees it."""
        thread = Thread.select().where(Thread.id == thread_id).first(self.db)
        if thread is None:
            raise NotFound(f"no thread {thread_id}")
        page = self._page(thread_id, thread.leaf_id, limit)
        members = self.members(thread_id)
        return ThreadSnapshot(
            thread=thread_view(thread),
            messages=self._live_views(page.messages),
            members=members,
            has_more=page.has_more,
            member=any(m.user_id == viewer for m in members),
            owner=viewer is not None and str(thread.created_by_id) == viewer,
        )

    def thread(self, thread_id: str) -> ThreadView:
        found = Thread.select().where(Thread.id == thread_id).first(self.db)
        if found is None:
            raise NotFound(f"no thread {thread_id}")
        return thread_view(found)

    def _owned(self, thread_id: str, user_id: str) -> Thread:
        thread = Thread.select().where(Thread.id == thread_id).first(self.db)
        if thread is None:
            raise NotFound(f"no thread {thread_id}")
        if str(thread.created_by_id) != user_id:
            raise Forbidden("only the chat's owner (who started it) may do that")
        return cast(Thread, thread)

    def rename(self, thread_id: str, user_id: str, title: str) -> ThreadView:
        """The owner names the chat (for every member)."""
        with write_transaction(self.db):
            self._owned(thread_id, user_id)
            Thread.update(title=title.strip()[:200], updated_at=now()).where(
                Thread.id == thread_id
            ).execute(self.db)
            return self.thread(thread_id)

    def live_jobs(self, thread_id: str, user_id: str) -> list[str]:
        """The owner's chat's jobs still queued or running (to stop before deleting it)."""
        self._owned(thread_id, user_id)
        rows = (
            Job.select(Job.id)
            .join(Message, on=(Job.message == Message.id))
            .where((Message.thread == thread_id) & Job.state.in_(list(LIVE)))
            .tuples()
        )
        return [str(job_id) for (job_id,) in rows.execute(self.db)]

    def delete(self, thread_id: str, user_id: str) -> None:
        """The owner deletes the chat for everyone: its messages, jobs and members too."""
        with write_transaction(self.db):
            self._owned(thread_id, user_id)
            Thread.delete().where(Thread.id == thread_id).execute(self.db)

    def older_messages(self, thread_id: str, before: str, limit: int = PAGE_SIZE) -> MessagePage:
        """The ``limit`` messages of its branch before message ``before``, oldest first."""
        if not Thread.select().where(Thread.id == thread_id).exists(self.db):
            raise NotFound(f"no thread {thread_id}")
        page = self._page(thread_id, before, limit, skip=1)
        if not page.messages and not self._message_in(thread_id, before):
            raise NotFound(f"no message {before} in thread {thread_id}")
        return MessagePage(messages=self._live_views(page.messages), has_more=page.has_more)

    def _page(self, thread_id: str, latest: str | None, limit: int, skip: int = 0) -> MessagePage:
        """The ``limit`` messages of the branch that ends at ``latest`` (after leaving out
        its ``skip`` newest), oldest first, each with its versions."""
        if latest is None:
            return MessagePage(messages=[], has_more=False)
        walk = (latest, thread_id, limit + skip)
        newest = message_views(sql.execute(self.db, q.PATH_UP, walk))[skip:]
        views = with_versions(self.db, thread_id, list(reversed(newest[:limit])))
        return MessagePage(messages=views, has_more=len(newest) > limit)

    def _message_in(self, thread_id: str, message_id: str) -> bool:
        where = (Message.id == message_id) & (Message.thread == thread_id)
        return bool(Message.select().where(where).exists(self.db))

    def show_version(self, thread_id: str, user_id: str, message_id: str) -> ThreadView:
        """A member switches the thread to the branch of ``message_id`` (a version of an
        edited message): it shows that branch, down to its newest message."""
        with write_transaction(self.db):
            lock_thread(self.db, thread_id)
            if not self.is_member(thread_id, user_id):
                raise Forbidden("only the chat's members may switch its branch")
            found = sql.execute(self.db, q.NEWEST_BELOW, (message_id, thread_id)).fetchone()
            if found is None:
                raise NotFound(f"no message {message_id} in thread {thread_id}")
            sql.execute(self.db, q.SET_LEAF, (found[0], thread_id))
            return self.thread(thread_id)

    def _live_views(self, views: list[MessageView]) -> list[MessageView]:
        """Add who holds each live reply's job, and each queued reply's queue position."""
        live = [v.job_id for v in views if v.job_id and not v.state.final]
        if live:
            held = {
                str(job): {"worker_id": worker, "attempt": attempt}
                for job, worker, attempt in sql.execute_in(self.db, q.HOLDERS, live)
            }
            views = [v.model_copy(update=held[v.job_id]) if v.job_id in held else v for v in views]
        if any(v.state is MessageState.QUEUED for v in views):
            places = positions(queued_in_order(self.db))
            views = [
                v.model_copy(update={"queue_position": places.get(v.job_id or "")})
                if v.state is MessageState.QUEUED
                else v
                for v in views
            ]
        return views

    def members(self, thread_id: str) -> list[MemberView]:
        rows = sql.execute(self.db, q.MEMBERS, (thread_id,)).fetchall()
        return [MemberView(user_id=user_id, name=name) for user_id, name in rows]

    def is_member(self, thread_id: str, user_id: str) -> bool:
        return sql.execute(self.db, q.IS_MEMBER, (thread_id, user_id)).fetchone() is not None

    def join(self, thread_id: str, user_id: str) -> list[MemberView]:
        """Make the user a member (at most ``MAX_THREAD_MEMBERS``); the members after."""
        with write_transaction(self.db):
            lock_thread(self.db, thread_id)
            join_thread(self.db, thread_id, user_id)
        return self.members(thread_id)

    def leave(self, thread_id: str, user_id: str) -> list[MemberView]:
        """Stop being a member (the thread leaves the user's list); the members after."""
        if not Thread.select().where(Thread.id == thread_id).exists(self.db):
            raise NotFound(f"no thread {thread_id}")
        ThreadMember.delete().where(
            (ThreadMember.thread == thread_id) & (ThreadMember.user == user_id)
        ).execute(self.db)
        return self.members(thread_id)

    def message(self, message_id: str) -> MessageView:
        found = views_of(self.db, Message.select(*message_fields()).where(Message.id == message_id))
        if not found:
            raise NotFound(f"no message {message_id}")
        return found[0]
