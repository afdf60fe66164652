"""The values the job package passes around: what dispatch picked, a job as the event
path sees it, text to write, a cancel for a worker, the deadlines, and a sweep's result."""

from dataclasses import dataclass, field
from enum import Enum

from coordinator.jobs import statements as q
from coordinator.jobs.states import JobState
from farm_protocol.chat import MessageView


@dataclass(frozen=True, slots=True)
class Pick:
    """Dispatch's choice: this job to this worker, which runs ``capacity`` jobs at once;
    the job's owner (an API key, else a user) may have at most ``cap`` running."""

    job_id: str
    worker_id: str
    capacity: int
    owner: str | None = None
    cap: int | None = None


@dataclass(frozen=True, slots=True)
class ActiveJob:
    """What the event path needs to know about a job held by a worker."""

    job_id: str
    attempt: int
    worker_id: str
    message_id: str
    thread_id: str
    content: str
    content_seq: int
    created_at: float  # when the request was queued


@dataclass(frozen=True, slots=True)
class TextAppend:
    """Text streamed since the last write, for one job attempt: chunks ``first_seq`` to
    ``last_seq``, joined."""

    job_id: str
    attempt: int
    worker_id: str
    message_id: str
    text: str
    last_seq: int  # the highest chunk seq included so far
    chunks: int  # chunks applied so far in this attempt
    starts: tuple[int, ...] = (0,)  # where each chunk from first_seq on starts in text
    # where the stored text most likely ends (the last chunk of the append before this
    # one, which a checkpoint overlaps); None: just before this append
    stored_guess: int | None = None

    @property
    def first_seq(self) -> int:
        return self.last_seq - len(self.starts) + 1

    @property
    def continues(self) -> int:
        """The chunk the stored text is first expected to end with (first_seq - 1 or
        more): the write tried first continues from it."""
        guess = self.stored_guess
        if guess is None or not self.first_seq - 1 <= guess < self.last_seq:
            return self.first_seq - 1
        return guess

    def after(self, seq: int) -> str:
        """The text of this append's chunks after chunk ``seq`` (first_seq - 1 or more)."""
        if seq >= self.last_seq:
            return ""
        return self.text[self.starts[seq + 1 - self.first_seq] :]


class Landed(Enum):
    """What became of one text append."""

    FENCED = "fenced"  # the job is not this attempt's or this worker's any more
    STORED = "stored"  # its text was stored already (a duplicate, or an overlap)
    GAP = "gap"  # the stored text ends before it begins: the text in between is missing
    WRITTEN = "written"
    STARTED = "started"  # written, and the reply's first text
    AFTER_STOP = "after_stop"  # written to a reply the coordinator had stopped


@dataclass(frozen=True, slots=True)
class Applied:
    landed: Landed
    stored_seq: int = -1  # the last chunk the stored text held (a gap, a continued write)


@dataclass(slots=True)
class Written:
    """A batch of text appends, written: the replies that started, the jobs whose text
    would have left a gap (job id -> the last chunk stored), and the stopped replies that
    took the last text their worker generated."""

    started: list[MessageView] = field(default_factory=list)
    gaps: dict[str, int] = field(default_factory=dict)
    stopped: list[MessageView] = field(default_factory=list)  # stopped replies, grown


@dataclass(frozen=True, slots=True)
class Expected:
    """What a worker's *done* says the whole reply is."""

    chunks: int
    chars: int
    sha256: str
    # what the model reported, kept with a reply that holds exactly this text
    usage: tuple[int | None, int | None, str | None, str | None] = (None, None, None, None)


@dataclass(frozen=True, slots=True)
class Finished:
    """A *done* checked against the stored text: the ended reply (None if fenced off),
    or, while text before the end is missing, the last chunk stored."""

    view: MessageView | None = None
    missing_after: int | None = None
    started: bool = False  # the reply's first text was written with the done


@dataclass(frozen=True, slots=True)
class Where:
    """Which job a conditional write may change: ``id = %s`` and then ``condition``."""

    job_id: str
    condition: str = ""
    params: tuple[object, ...] = ()

    @classmethod
    def held(cls, job_id: str, attempt: int, worker_id: str, also: str = "") -> "Where":
        """Still this attempt's, held by this worker (``also``: a further condition)."""
        return cls(job_id, q.HELD_BY + also, (attempt, worker_id))

    @classmethod
    def in_state(cls, job_id: str, state: JobState) -> "Where":
        return cls(job_id, " AND state = %s", (state.value,))

    def but(self, also: str) -> "Where":
        return Where(self.job_id, self.condition + also, self.params)


@dataclass(frozen=True, slots=True)
class Health:
    """When a worker that keeps failing is quarantined, and for how long."""

    quarantine_after: int = 3  # failed jobs in a row
    quarantine_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Deadlines:
    accept_s: float
    queue_s: float
    first_token_s: float
    stall_s: float
    reply_s: float
    worker_grace_s: float
    # A job whose worker was lost after text reached the user: fail it (the user can retry,
    # as in the original), or start it again elsewhere from an empty text.
    requeue_lost_streaming: bool = False


@dataclass(frozen=True, slots=True)
class Cancel:
    """Tell ``worker_id`` to stop ``attempt`` of ``job_id``."""

    worker_id: str
    job_id: str
    attempt: int
    reason: str


@dataclass(slots=True)
class SweepResult:
    messages: list[MessageView] = field(default_factory=list)
    cancels: list[Cancel] = field(default_factory=list)
    requeued: int = 0
