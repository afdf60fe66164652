"""The topic tree. Every topic string in the farm is built (or parsed) here.

Every topic a worker may publish or subscribe to contains its worker id, so the broker
can enforce per-worker rules with literal ACLs::

    farm/v2/workers/{worker_id}/status                          worker -> all     QoS1 retained
    farm/v2/workers/{worker_id}/heartbeat                       worker -> coord   QoS0
    farm/v2/workers/{worker_id}/assign                          coord  -> worker  QoS1
    farm/v2/workers/{worker_id}/control                         coord  -> worker  QoS1
    farm/v2/workers/{worker_id}/jobs/{thread_id}/{job_id}       worker -> webapp  QoS1
    farm/v2/workers/{worker_id}/progress/{thread_id}/{job_id}   worker -> coord, webapp QoS1
    farm/v2/threads/{thread_id}/events                          coord  -> webapp  QoS1

A job's live chunks (``jobs/``) are for the people watching its thread: a webapp
subscribes to a thread's (``thread_chunks``, ``thread_progress``, ``thread_events``) while
a browser of its own watches it, so it receives a new reply's first chunk whenever it
comes. Its progress (accepted, checkpoints of the text, done, failed) is the
coordinators' work, spread over them by a shared subscription (``shared``) where the
broker has them.
"""

from dataclasses import dataclass

from farm_protocol.errors import TopicError
from farm_protocol.ids import check_id
from farm_protocol.version import TOPIC_ROOT

QOS_STATUS = 1
QOS_HEARTBEAT = 0
QOS_ASSIGN = 1
QOS_CONTROL = 1
QOS_JOB_EVENTS = 1  # published by workers (chunks too), and received by coordinators
QOS_LIVE_CHUNKS = 0  # as webapps receive live chunks: progress repairs what they miss
QOS_THREAD_EVENTS = 1

_WORKERS = f"{TOPIC_ROOT}/workers"
# Outside the versioned tree, so that a worker of any version reads it: the protocol the
# farm's coordinators speak (FarmInfo, retained). A worker of another version stops,
# saying what to upgrade, instead of waiting for jobs that can never reach it.
FARM_INFO = f"{TOPIC_ROOT.split('/')[0]}/info"
QOS_INFO = 1
_THREADS = f"{TOPIC_ROOT}/threads"

# Subscription filters used by the coordinator, the webapp and observers.
ALL_STATUS = f"{_WORKERS}/+/status"
ALL_HEARTBEATS = f"{_WORKERS}/+/heartbeat"
ALL_JOB_EVENTS = f"{_WORKERS}/+/jobs/+/+"
ALL_JOB_PROGRESS = f"{_WORKERS}/+/progress/+/+"
ALL_THREAD_EVENTS = f"{_THREADS}/+/events"
ALL_ASSIGN = f"{_WORKERS}/+/assign"
ALL_CONTROL = f"{_WORKERS}/+/control"


def worker_status(worker_id: str) -> str:
    return f"{_WORKERS}/{check_id(worker_id, 'worker id')}/status"


def worker_heartbeat(worker_id: str) -> str:
    return f"{_WORKERS}/{check_id(worker_id, 'worker id')}/heartbeat"


def worker_assign(worker_id: str) -> str:
    return f"{_WORKERS}/{check_id(worker_id, 'worker id')}/assign"


def worker_control(worker_id: str) -> str:
    return f"{_WORKERS}/{check_id(worker_id, 'worker id')}/control"


def _job_topic(leaf: str, worker_id: str, thread_id: str, job_id: str) -> str:
    worker, thread = check_id(worker_id, "worker id"), check_id(thread_id, "thread id")
    return f"{_WORKERS}/{worker}/{leaf}/{thread}/{check_id(job_id, 'job id')}"


def job_events(worker_id: str, thread_id: str, job_id: str) -> str:
    """A job's live chunks, for the webapps whose browsers watch its thread."""
    return _job_topic("jobs", worker_id, thread_id, job_id)


def job_progress(worker_id: str, thread_id: str, job_id: str) -> str:
    """A job's lifecycle and text checkpoints, for the coordinators (and watching webapps)."""
    return _job_topic("progress", worker_id, thread_id, job_id)


def worker_job_events_filter(worker_id: str) -> str:
    """The live chunks one worker may publish about its jobs (an ACL pattern)."""
    return f"{_WORKERS}/{check_id(worker_id, 'worker id')}/jobs/+/+"


def worker_job_progress_filter(worker_id: str) -> str:
    """The progress one worker may publish about its jobs (an ACL pattern)."""
    return f"{_WORKERS}/{check_id(worker_id, 'worker id')}/progress/+/+"


def thread_chunks(thread_id: str) -> str:
    """The filter for the live chunks of every job of one thread, whichever worker."""
    return f"{_WORKERS}/+/jobs/{check_id(thread_id, 'thread id')}/+"


def thread_progress(thread_id: str) -> str:
    """The filter for the progress of every job of one thread, whichever worker."""
    return f"{_WORKERS}/+/progress/{check_id(thread_id, 'thread id')}/+"


SHARE_PREFIX = "$share/"


def shared(group: str, topic_filter: str) -> str:
    """``topic_filter`` as a shared subscription of ``group``: the broker hands each
    matching message to one member of the group (round-robin per message)."""
    return f"{SHARE_PREFIX}{check_id(group, 'share group')}/{topic_filter}"


def thread_events(thread_id: str) -> str:
    return f"{_THREADS}/{check_id(thread_id, 'thread id')}/events"


@dataclass(frozen=True, slots=True)
class WorkerTopic:
    """A parsed ``farm/v1/workers/{worker_id}/...`` topic."""

    worker_id: str
    leaf: str  # "status", "heartbeat", "assign", "control", "jobs" or "progress"
    job_id: str | None = None
    thread_id: str | None = None


def parse_worker_topic(topic: str) -> WorkerTopic:
    """Parse a worker topic, raising :class:`TopicError` for anything off the tree."""
    prefix = f"{_WORKERS}/"
    if not topic.startswith(prefix):
        raise TopicError(f"not a worker topic: {topic[:120]!r}")
    parts = topic[len(prefix) :].split("/")
    if len(parts) == 2 and parts[1] in ("status", "heartbeat", "assign", "control"):
        return WorkerTopic(check_id(parts[0], "worker id"), parts[1])
    if len(parts) == 4 and parts[1] in ("jobs", "progress"):
        return WorkerTopic(
            check_id(parts[0], "worker id"),
            parts[1],
            check_id(parts[3], "job id"),
            check_id(parts[2], "thread id"),
        )
    raise TopicError(f"unknown worker topic: {topic[:120]!r}")


def subject(topic: str) -> str:
    """The worker or thread a topic is about (its id level), for keying log lines about
    what arrived on it; the topic itself when it is off the tree."""
    parts = topic.split("/")
    return parts[3] if len(parts) > 3 else topic[:120]


def parse_thread_topic(topic: str) -> str:
    """Return the thread id of a ``farm/v1/threads/{id}/events`` topic."""
    prefix = f"{_THREADS}/"
    parts = topic[len(prefix) :].split("/") if topic.startswith(prefix) else []
    if len(parts) != 2 or parts[1] != "events":
        raise TopicError(f"not a thread topic: {topic[:120]!r}")
    return check_id(parts[0], "thread id")
