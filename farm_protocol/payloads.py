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

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from farm_protocol.chat import MAX_PROMPT_CHARS, MemberView, MessageView, Role
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
    role: Role
    content: str = Field(max_length=MAX_PROMPT_CHARS)


# --- coordinator -> worker (assign topic) ---------------------------------------------


class JobAssignment(_Payload):
    kind: Literal["assign"] = "assign"
    job_id: TopicId
    thread_id: TopicId  # in the topics of the job's chunks and progress
    attempt: int = Field(ge=1)
    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatTurn] = Field(min_length=1, max_length=MAX_TURNS)
    options: dict[str, float | int | str | bool] = Field(default_factory=dict)
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
    eval_count: int | None = None
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


ThreadEvent = Annotated[MessageEvent | MembersEvent, Field(discriminator="kind")]
