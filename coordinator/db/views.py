"""Conversions from table rows to the wire contract's views."""

from coordinator.db.tables import Message, Thread
from farm_protocol.chat import MessageState, MessageView, ThreadView


def message_view(row: Message) -> MessageView:
    return MessageView(
        message_id=row.id,
        thread_id=row.thread_id,
        role=row.role,
        author=row.author,
        content=row.content,
        state=MessageState(row.state),
        model=row.model,
        job_id=row.job_id,
        content_seq=row.content_seq,
        error=row.error,
        created_at=row.created_at,
    )


def thread_view(row: Thread) -> ThreadView:
    return ThreadView(
        thread_id=row.id,
        title=row.title,
        description=row.description,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
