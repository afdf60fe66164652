"""What the webapp sends a browser on a thread's websocket (``/ws/threads/{id}``), one
JSON object per websocket message, tagged by ``type``:

* ``snapshot``: the thread as it is now (a :class:`~farm_protocol.chat.ThreadSnapshot`,
  its fields at the top level), always first;
* ``message``: a message was added or changed (a reply's state, its stored text);
* ``members``: who is in the thread now;
* ``thread``: the thread was renamed or shows another branch (its new view: a page that
  does not hold its ``leaf_id`` loads a fresh snapshot), or was deleted (``thread`` null);
* ``chunk``: a piece of a reply's text as it streams. ``seq`` counts a job attempt's
  chunks from 0; a message's ``content_seq`` says which of them its ``content`` already
  holds, so a browser appends only the chunks after it.

Events that queued up while the webapp was sending come together, as a JSON list of
events in one websocket message (one write instead of one each). Every browser watching a
thread is sent the same event object, so an event's JSON (``wire``) is made once.

A socket closed with :data:`RELOAD_CLOSE_CODE` fell behind: the browser reconnects and
starts again from a snapshot.
"""

from functools import cached_property
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from farm_protocol.chat import MemberView, MessageView, ThreadSnapshot, ThreadView

RELOAD_CLOSE_CODE = 4000  # "you fell behind: reconnect and resync"
NO_THREAD_CLOSE_CODE = 4004


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @cached_property
    def wire(self) -> str:
        """The event's JSON, made on its first send (and kept for the other browsers)."""
        return self.model_dump_json()


class SnapshotEvent(ThreadSnapshot):
    type: Literal["snapshot"] = "snapshot"

    @cached_property
    def wire(self) -> str:
        return self.model_dump_json()


class MessageChanged(_Event):
    type: Literal["message"] = "message"
    message: MessageView


class MembersChanged(_Event):
    type: Literal["members"] = "members"
    members: list[MemberView]


class ThreadChanged(_Event):
    """The thread was renamed or shows another branch (a message edited, a version
    chosen: see ``ThreadView.leaf_id``), or was deleted (``thread`` None: nothing more
    will come)."""

    type: Literal["thread"] = "thread"
    thread: ThreadView | None = None


class ChunkEvent(_Event):
    type: Literal["chunk"] = "chunk"
    job_id: str
    attempt: int
    seq: int
    text: str


BrowserEvent = Annotated[
    SnapshotEvent | MessageChanged | MembersChanged | ThreadChanged | ChunkEvent,
    Field(discriminator="type"),
]
