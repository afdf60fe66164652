"""The one conversion from stored rows to the wire contract's views.

Every query that returns messages selects :data:`MESSAGE_COLUMNS` (hand-written
statements) or :func:`message_fields` (the query builder), in that order, and hands the
rows here."""

import json
from collections.abc import Iterable, Sequence
from typing import Any, cast

import peewee as pw

from coordinator.db.tables import Message, Thread
from farm_protocol.chat import MessageView, ThreadView

# The columns a MessageView is built from, in order.
MESSAGE_COLUMNS = (
    "id, thread_id, role, author, content, state, model, job_id, content_seq, error, created_at,"
    " prompt_tokens, completion_tokens, finish_reason, tool_calls, served_by, generation_s,"
    " user_id, parent_id"
)
# the same, of a message table aliased ``m``
M_MESSAGE_COLUMNS = ", ".join(f"m.{c.strip()}" for c in MESSAGE_COLUMNS.split(","))
_VIEW_FIELDS = (
    "message_id",
    "thread_id",
    "role",
    "author",
    "content",
    "state",
    "model",
    "job_id",
    "content_seq",
    "error",
    "created_at",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "tool_calls",
    "served_by",
    "generation_s",
    "user_id",
    "parent_id",
)


def message_fields() -> list[pw.Field]:
    """The query builder's :data:`MESSAGE_COLUMNS` (select them with ``.tuples()``)."""
    return [
        Message.id,
        Message.thread,
        Message.role,
        Message.author,
        Message.content,
        Message.state,
        Message.model,
        Message.job_id,
        Message.content_seq,
        Message.error,
        Message.created_at,
        Message.prompt_tokens,
        Message.completion_tokens,
        Message.finish_reason,
        Message.tool_calls,
        Message.served_by,
        Message.generation_s,
        Message.user,
        Message.parent_id,
    ]


def message_view(row: Sequence[Any]) -> MessageView:
    """The view of a row selected as :data:`MESSAGE_COLUMNS`."""
    fields = dict(zip(_VIEW_FIELDS, row, strict=True))
    if fields["tool_calls"] is not None:
        fields["tool_calls"] = json.loads(fields["tool_calls"])
    return MessageView.model_validate(fields)


def message_views(rows: Iterable[Sequence[Any]]) -> list[MessageView]:
    return [message_view(r) for r in rows]


def views_of(db: pw.Database, query: "pw.ModelSelect[Any]") -> list[MessageView]:
    """Views of a query builder's select of :func:`message_fields`, run on ``db``."""
    return message_views(cast(list[tuple[Any, ...]], list(query.tuples().execute(db))))


def thread_view(row: Thread, members: int = 0) -> ThreadView:
    return ThreadView(
        thread_id=row.id,
        title=row.title,
        description=row.description,
        created_at=row.created_at,
        updated_at=row.updated_at,
        members=members,
        leaf_id=row.leaf_id,
    )
