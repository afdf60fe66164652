"""The topic tree. Every topic string in the farm is built (or parsed) here.

Every topic a worker may publish or subscribe to contains its worker id, so the broker
can enforce per-worker rules with literal ACLs::

    farm/v1/workers/{worker_id}/status          worker -> all       QoS1 retained
    farm/v1/workers/{worker_id}/heartbeat       worker -> coord     QoS0
    farm/v1/workers/{worker_id}/assign          coord  -> worker    QoS1
    farm/v1/workers/{worker_id}/control         coord  -> worker    QoS1
    farm/v1/workers/{worker_id}/jobs/{job_id}   worker -> coord, webapp   QoS1
    farm/v1/threads/{thread_id}/events          coord  -> webapp    QoS1
"""

from dataclasses import dataclass

from farm_protocol.errors import TopicError
from farm_protocol.ids import check_id
from farm_protocol.version import TOPIC_ROOT

QOS_STATUS = 1
QOS_HEARTBEAT = 0
QOS_ASSIGN = 1
QOS_CONTROL = 1
QOS_JOB_EVENTS = 1
QOS_THREAD_EVENTS = 1

_WORKERS = f"{TOPIC_ROOT}/workers"
_THREADS = f"{TOPIC_ROOT}/threads"

# Subscription filters used by the coordinator, the webapp and observers.
ALL_STATUS = f"{_WORKERS}/+/status"
ALL_HEARTBEATS = f"{_WORKERS}/+/heartbeat"
ALL_JOB_EVENTS = f"{_WORKERS}/+/jobs/+"
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


def job_events(worker_id: str, job_id: str) -> str:
    return f"{_WORKERS}/{check_id(worker_id, 'worker id')}/jobs/{check_id(job_id, 'job id')}"


def worker_job_events_filter(worker_id: str) -> str:
    """Everything one worker may publish about its jobs (an ACL pattern)."""
    return f"{_WORKERS}/{check_id(worker_id, 'worker id')}/jobs/+"


def thread_events(thread_id: str) -> str:
    return f"{_THREADS}/{check_id(thread_id, 'thread id')}/events"


@dataclass(frozen=True, slots=True)
class WorkerTopic:
    """A parsed ``farm/v1/workers/{worker_id}/...`` topic."""

    worker_id: str
    leaf: str  # "status", "heartbeat", "assign", "control" or "jobs"
    job_id: str | None = None


def parse_worker_topic(topic: str) -> WorkerTopic:
    """Parse a worker topic, raising :class:`TopicError` for anything off the tree."""
    prefix = f"{_WORKERS}/"
    if not topic.startswith(prefix):
        raise TopicError(f"not a worker topic: {topic[:120]!r}")
    parts = topic[len(prefix) :].split("/")
    if len(parts) == 2 and parts[1] in ("status", "heartbeat", "assign", "control"):
        return WorkerTopic(check_id(parts[0], "worker id"), parts[1])
    if len(parts) == 3 and parts[1] == "jobs":
        return WorkerTopic(check_id(parts[0], "worker id"), "jobs", check_id(parts[2], "job id"))
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
