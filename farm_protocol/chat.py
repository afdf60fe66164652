"""Chat data as it travels between the coordinator, the webapp and browsers.

The coordinator owns these records; the webapp reads and writes them through the
coordinator's chat HTTP API and receives changes on thread topics.
"""

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from farm_protocol.ids import TopicId

# The chat API's headers (webapp -> coordinator, beside the service token): the browser
# session acting, and the browser's address (new identities are rate limited by it).
SESSION_HEADER = "X-Farm-Session"
CLIENT_HEADER = "X-Farm-Client"

MAX_PROMPT_CHARS = 100_000
MAX_SYSTEM_PROMPT_CHARS = 20_000


class MessageState(StrEnum):
    """What a user sees of a message. Assistant messages move through these."""

    QUEUED = "queued"  # waiting for a llama
    GENERATING = "generating"  # tokens are streaming
    DONE = "done"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (MessageState.QUEUED, MessageState.GENERATING)


Role = Literal["system", "user", "assistant"]


class ToolCall(BaseModel):
    """A model's call of a tool, as Ollama gives it: the function and its arguments."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(min_length=1, max_length=200)
    arguments: dict[str, Any] = Field(default_factory=dict)


MAX_TOOL_CALLS = 64


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UserView(_View):
    user_id: str
    name: str


class MessageView(_View):
    message_id: str
    thread_id: TopicId
    role: Role
    author: str  # the user's display name, or the model for assistant messages
    content: str
    state: MessageState
    model: str | None = None
    job_id: str | None = None
    # The chunk sequence number that ``content`` covers: chunks with seq <= content_seq are
    # already in ``content``. -1 when no chunk has been applied.
    content_seq: int = -1
    error: str | None = None
    created_at: float
    # While queued: 1 for the next reply to be served. None when unknown or not queued.
    queue_position: int | None = None
    # While a worker holds the job: which one, and the attempt. The webapp forwards a
    # job's chunks only from this worker and attempt (a rogue worker cannot inject text).
    worker_id: str | None = None
    attempt: int | None = None
    # Once a reply succeeded: its tokens as the model counted them, why it ended
    # ("stop", "length" when the token limit ended it, "tool_calls"), and its tool calls.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    tool_calls: list[ToolCall] | None = None
    served_by: str | None = None  # the worker's name
    generation_s: float | None = None  # from its first token to its end
    # Who wrote it (a user message; the user who asked, for a reply), and the message it
    # follows in its branch (None for a thread's first).
    user_id: str | None = None
    parent_id: str | None = None
    # In a thread's pages: the versions of an edited message (its siblings, itself among
    # them), oldest first; None when it has only the one.
    versions: list[str] | None = None


class ThreadView(_View):
    thread_id: TopicId
    title: str
    description: str  # the first message (its first 200 characters): a summary
    created_at: float
    updated_at: float  # the last activity
    members: int = 0  # how many (in a user's list of chats; 0 where not counted)
    leaf_id: str | None = None  # the latest message of the branch it shows


class MemberView(_View):
    """Someone who joined a thread (at most ``MAX_THREAD_MEMBERS`` do)."""

    user_id: str
    name: str


MAX_THREAD_MEMBERS = 25
PAGE_SIZE = 20  # messages per page: a snapshot holds the latest page


class ThreadSnapshot(_View):
    thread: ThreadView
    messages: list[MessageView]  # the latest page, oldest first
    members: list[MemberView] = Field(default_factory=list)
    has_more: bool = False  # older messages exist (see MessagePage)
    member: bool = False  # whether the user asking is a member
    owner: bool = False  # whether the user asking made it (and may rename or delete it)


class MessagePage(_View):
    """Messages older than a given one, oldest first."""

    messages: list[MessageView]
    has_more: bool


class FleetModels(_View):
    """What the fleet can serve right now, for the model picker and the banner."""

    models: list[str]  # served by an online worker now
    default_model: str | None
    # configured (offered when a worker serves them), but no online worker serves them now
    unavailable: list[str] = Field(default_factory=list)
    workers_online: int
    simulated: bool  # every online worker answers from the Ollama simulator
    loaded: list[str] = Field(default_factory=list)  # in some online worker's memory now


class CreateThreadRequest(_View):
    system_prompt: str = Field(default="", max_length=MAX_SYSTEM_PROMPT_CHARS)


class RenameThreadRequest(_View):
    title: str = Field(min_length=1, max_length=200)


class SendMessageRequest(_View):
    text: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = Field(default=None, max_length=200)


class ShowVersionRequest(_View):
    """Switch a thread to the branch of one version of an edited message."""

    message_id: TopicId


class SendMessageResponse(_View):
    user_message: MessageView
    reply: MessageView


class ErrorBody(_View):
    error: str
    retry_after_s: float | None = None
    # why a 503 (queue_full, queue_standing, no_worker), for clients that act on it
    code: str | None = None
