"""Every MQTT payload, one pydantic model each, tagged by a ``kind`` literal.

Every job event carries the job's ``attempt``: the coordinator fences every late message
from an earlier attempt with it, so a zombie can never overwrite a newer one.

A job's text travels twice. Live, chunk by chunk (:class:`JobChunk`, on the job's
``jobs/`` topic), for the people watching. And in checkpoints (:class:`JobCheckpoint`,
and the tail that *done* and *failed* carry, on its ``progress/`` topic), for the
coordinators, which store it. A checkpoint holds the texts of chunks ``from_seq`` on,
starting where the one before the previous checkpoint ended, so consecutive checkpoints
overlap: one that is lost, or handled late by another coordinator, is covered by the next.
"""

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from farm_protocol.chat import (
    MAX_PROMPT_CHARS,
    MAX_TOOL_CALLS,
    MemberView,
    MessageView,
    Role,
    ThreadView,
    ToolCall,
)
from farm_protocol.ids import TopicId

MAX_CHUNK_CHARS = 65_536
MAX_TURNS = 200
# The largest MQTT packet the broker takes (mosquitto.conf's max_packet_size: a client
# sending a larger one is disconnected). The coordinator's assignments stay under it.
MAX_PACKET_BYTES = 4 * 1024 * 1024
# The largest message a worker has reason to send (a chunk of MAX_CHUNK_CHARS characters,
# JSON-escaped); anything larger from a worker is dropped unread.
MAX_WORKER_MESSAGE_BYTES = 512 * 1024


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ChatTurn(_Payload):
    """One message of the context. Beside the chat's roles, an API request's context may
    hold the assistant's tool calls and the tools' results (``tool``)."""

    role: Role | Literal["tool"]
    content: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    tool_calls: list[ToolCall] = Field(default_factory=list, max_length=MAX_TOOL_CALLS)
    tool_name: str | None = Field(default=None, max_length=200)  # a tool result's tool


# What Ollama's ``options`` may hold here.
OptionValue = float | int | str | bool | list[str]
# What a job does: a chat reply (text that streams), or embeddings of ``inputs`` (their
# vectors come back as the job's text, one JSON array per line, see ``embedding_text``).
Task = Literal["chat", "embed"]
MAX_EMBED_INPUTS = 256


class Generation(_Payload):
    """How an API client wants its reply made, beyond the model: Ollama's ``options``,
    ``format`` and ``tools``, and the exact context it sent (with tool calls and
    results). The webapp translates a request into this; the coordinator keeps it with
    the job and puts it in each assignment."""

    messages: list[ChatTurn] = Field(default_factory=list, max_length=MAX_TURNS)
    options: dict[str, OptionValue] = Field(default_factory=dict)
    # Ollama's ``format``: "json", or a JSON schema the reply must follow
    format: Literal["json"] | dict[str, Any] | None = None
    tools: list[dict[str, Any]] = Field(default_factory=list, max_length=128)
    task: Task = "chat"
    inputs: list[str] = Field(default_factory=list, max_length=MAX_EMBED_INPUTS)
    # Ollama's embedding settings: vectors cut to this length; a too long input cut
    # (true, Ollama's default) or refused
    dimensions: int | None = Field(default=None, ge=1, le=65_536)
    truncate: bool | None = None

    @model_validator(mode="after")
    def _asks_something(self) -> "Generation":
        if self.task == "embed" and not self.inputs:
            raise ValueError("an embedding request needs inputs")
        if any(len(text) > MAX_PROMPT_CHARS for text in self.inputs):
            raise ValueError(f"an input is longer than {MAX_PROMPT_CHARS} characters")
        return self


# The most text an embedding job may make: its reply, stored and sent on whole in one
# MQTT message, must stay under the broker's MAX_PACKET_BYTES.
MAX_EMBEDDING_TEXT_CHARS = 3 * 1024 * 1024


def embedding_text(vectors: list[list[float]]) -> str:
    """Embeddings as a job's text: one JSON array per line, each number with 9 significant
    digits (Ollama's vectors are float32: 9 digits give each back exactly, in half the
    text Python's float64 repr takes). ValueError for a number JSON cannot carry."""
    lines = []
    for vector in vectors:
        if not all(math.isfinite(x) for x in vector):
            raise ValueError("an embedding holds a value that is not a finite number")
        lines.append("[" + ",".join(format(x, ".9g") for x in vector) + "]\n")
    return "".join(lines)


def embeddings_of(text: str) -> list[list[float]]:
    """The vectors of an embedding job's text (``embedding_text``)."""
    return [json.loads(line) for line in text.splitlines() if line]


# --- coordinator -> worker (assign topic) ---------------------------------------------


class JobAssignment(_Payload):
    kind: Literal["assign"] = "assign"
    job_id: TopicId
    thread_id: TopicId  # in the topics of the job's chunks and progress
    attempt: int = Field(ge=1)
    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatTurn] = Field(min_length=1, max_length=MAX_TURNS)
    options: dict[str, OptionValue] = Field(default_factory=dict)
    format: Literal["json"] | dict[str, Any] | None = None  # see Generation
    tools: list[dict[str, Any]] = Field(default_factory=list)  # Ollama's (OpenAI's) shape
    task: Task = "chat"  # see Generation
    inputs: list[str] = Field(default_factory=list, max_length=MAX_EMBED_INPUTS)
    dimensions: int | None = Field(default=None, ge=1, le=65_536)
    truncate: bool | None = None
    issued_at: float


# --- coordinator -> worker (control topic) --------------------------------------------


class JobCancel(_Payload):
    kind: Literal["cancel"] = "cancel"
    job_id: TopicId
    attempt: int = Field(ge=1)
    reason: str = "cancelled"


class Drain(_Payload):
    kind: Literal["drain"] = "drain"
    reason: str = "drain requested"


class JobReplay(_Payload):
    """Publish this job attempt's progress again: *accepted*, a checkpoint of the text
    from chunk ``from_seq`` on, and its final event if it has one. The coordinator asks
    after a restart, when the stored text has a gap that does not fill by itself, and
    when a running job has gone quiet; a worker that no longer knows the job answers
    with a retryable *failed*."""

    kind: Literal["replay"] = "replay"
    job_id: TopicId
    thread_id: TopicId
    attempt: int = Field(ge=1)
    from_seq: int = Field(ge=0)


ControlMessage = Annotated[JobCancel | Drain | JobReplay, Field(discriminator="kind")]


# --- worker -> coordinator and webapp (job events topic) ------------------------------


class JobAccepted(_Payload):
    kind: Literal["accepted"] = "accepted"
    job_id: TopicId
    attempt: int = Field(ge=1)
    session_id: str


class JobChunk(_Payload):
    kind: Literal["chunk"] = "chunk"
    job_id: TopicId
    attempt: int = Field(ge=1)
    seq: int = Field(ge=0)
    text: str = Field(max_length=MAX_CHUNK_CHARS)


# About how much text one checkpoint carries at most (a replay of a long reply is split
# into several), so that it stays under MAX_WORKER_MESSAGE_BYTES however it is escaped.
MAX_CHECKPOINT_CHARS = MAX_CHUNK_CHARS


class _Texts(_Payload):
    """The texts of chunks ``from_seq``, ``from_seq + 1``, ... of one job attempt."""

    from_seq: int = Field(default=0, ge=0)
    texts: list[str] = Field(default_factory=list, max_length=100_000)

    @property
    def last_seq(self) -> int:
        return self.from_seq + len(self.texts) - 1


class JobCheckpoint(_Texts):
    """The reply's text so far, for the coordinators to store (see the module's doc)."""

    kind: Literal["checkpoint"] = "checkpoint"
    job_id: TopicId
    attempt: int = Field(ge=1)


class JobDone(_Texts):
    """The end of a stream, with the text since the last checkpoint but one (``from_seq``,
    ``texts``). ``chunks``, ``chars`` and ``sha256`` let a receiver check that it holds
    exactly the text the worker generated."""

    kind: Literal["done"] = "done"
    job_id: TopicId
    attempt: int = Field(ge=1)
    chunks: int = Field(ge=0)
    chars: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # Ollama's counts: the prompt's tokens and the reply's; why it ended ("stop", or
    # "length" when num_predict ended it); and the tools it called instead of answering.
    prompt_eval_count: int | None = Field(default=None, ge=0)
    eval_count: int | None = Field(default=None, ge=0)
    done_reason: str | None = Field(default=None, max_length=32)
    tool_calls: list[ToolCall] = Field(default_factory=list, max_length=MAX_TOOL_CALLS)
    total_duration_ns: int | None = None


class JobFailed(_Texts):
    """A job that cannot finish, with the text since the last checkpoint but one."""

    kind: Literal["failed"] = "failed"
    job_id: TopicId
    attempt: int = Field(ge=1)
    reason: str = Field(max_length=2000)
    retryable: bool
    chunks: int = Field(default=0, ge=0)  # how many chunks went out before the failure


# On a job's progress topic.
JobProgress = Annotated[
    JobAccepted | JobCheckpoint | JobDone | JobFailed, Field(discriminator="kind")
]
# Everything published about a job, on either of its topics.
JobEvent = Annotated[
    JobAccepted | JobChunk | JobCheckpoint | JobDone | JobFailed, Field(discriminator="kind")
]


# --- worker -> all (status, retained) and worker -> coordinator (heartbeat) -----------

WorkerState = Literal["online", "draining", "unavailable", "offline"]


class FarmInfo(_Payload):
    """What the farm's coordinators speak (retained on ``topics.FARM_INFO``). Every
    version reads it, so it only ever gains fields."""

    kind: Literal["farm"] = "farm"
    protocol: int = Field(ge=1)
    version: str = Field(default="", max_length=64)


class WorkerStatus(_Payload):
    kind: Literal["status"] = "status"
    worker_id: TopicId
    session_id: str
    state: WorkerState
    models: list[str] = Field(default_factory=list)
    loaded_models: list[str] = Field(default_factory=list)
    capacity: int = Field(default=1, ge=0, le=256)
    version: str = ""
    protocol: int = 1
    simulated: bool = False
    reason: str = ""
    at: float


class RunningJob(_Payload):
    job_id: TopicId
    attempt: int = Field(ge=1)


class Heartbeat(_Payload):
    kind: Literal["heartbeat"] = "heartbeat"
    worker_id: TopicId
    session_id: str
    seq: int = Field(ge=0)
    running: list[RunningJob] = Field(default_factory=list)
    at: float


# --- coordinator -> webapp (thread events topic) --------------------------------------


class MessageEvent(_Payload):
    kind: Literal["message"] = "message"
    message: MessageView


class MembersEvent(_Payload):
    """Who is in a thread now (after a join, a leave or a member's new name)."""

    kind: Literal["members"] = "members"
    thread_id: TopicId
    members: list[MemberView]


class ThreadChangedEvent(_Payload):
    """A thread renamed or switched to another branch (``thread``), or deleted by its
    owner (``thread`` None)."""

    kind: Literal["thread"] = "thread"
    thread_id: TopicId
    thread: ThreadView | None = None


ThreadEvent = Annotated[
    MessageEvent | MembersEvent | ThreadChangedEvent, Field(discriminator="kind")
]
