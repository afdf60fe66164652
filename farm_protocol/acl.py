"""Who may publish and subscribe to what: the farm's least-privilege rules, as data.

One source for both brokers: the coordinator turns them into Mosquitto dynamic-security
roles (one role per worker with literal topics, since Mosquitto 2.0.11 has no ``%u`` in
dynsec ACLs), and the dev broker's amqtt topic plugin checks them directly.

Accounts:

* a worker (username = its worker id, client id ``worker-{id}``): subscribes to its own
  ``assign`` and ``control``; publishes its own ``status`` (also its Will), ``heartbeat``,
  ``jobs/+`` and ``progress/+``. Nothing of any other worker, no wildcards.
* ``farm-coordinator``: subscribes to every worker's status, and to heartbeats and job
  progress, shared with the other coordinators (group :data:`COORDINATOR_GROUP`) or
  plain; publishes assignments, control messages and thread events, and clears the
  retained status of a worker that is revoked or deleted.
* ``farm-webapp``: subscribes to live chunks, job progress and thread events (any
  narrower filter of these: one job's, one thread's); publishes nothing.
* ``farm-observer``: read-only on everything under ``farm/`` (for ``mosquitto_sub``).

Worker ids may not take these names: the ``farm-`` prefix is reserved for services.
"""

from dataclasses import dataclass
from enum import StrEnum

from farm_protocol import topics
from farm_protocol.version import TOPIC_ROOT

SERVICE_PREFIX = "farm-"
COORDINATOR = "farm-coordinator"
WEBAPP = "farm-webapp"
OBSERVER = "farm-observer"
SERVICES = (COORDINATOR, WEBAPP, OBSERVER)
# The coordinators' shared-subscription group: each job event reaches one of them.
COORDINATOR_GROUP = "farm-coordinators"


class Action(StrEnum):
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"


@dataclass(frozen=True, slots=True)
class Grant:
    action: Action
    filter: str  # an MQTT topic filter; for subscribe, the filters that may be requested


def worker_client_id(worker_id: str) -> str:
    return f"worker-{worker_id}"


def worker_role(worker_id: str) -> str:
    return f"{SERVICE_PREFIX}worker-{worker_id}"


def is_reserved(name: str) -> bool:
    return name.lower().startswith(SERVICE_PREFIX) or name.lower() == "admin"


def worker_grants(worker_id: str) -> list[Grant]:
    return [
        Grant(Action.SUBSCRIBE, topics.worker_assign(worker_id)),
        Grant(Action.SUBSCRIBE, topics.worker_control(worker_id)),
        Grant(Action.PUBLISH, topics.worker_status(worker_id)),
        Grant(Action.PUBLISH, topics.worker_heartbeat(worker_id)),
        Grant(Action.PUBLISH, topics.worker_job_events_filter(worker_id)),
        Grant(Action.PUBLISH, topics.worker_job_progress_filter(worker_id)),
        Grant(Action.SUBSCRIBE, topics.FARM_INFO),
    ]


SERVICE_GRANTS: dict[str, list[Grant]] = {
    COORDINATOR: [
        Grant(Action.SUBSCRIBE, topics.ALL_STATUS),
        Grant(Action.SUBSCRIBE, topics.ALL_HEARTBEATS),
        Grant(Action.SUBSCRIBE, topics.ALL_JOB_PROGRESS),
        Grant(Action.SUBSCRIBE, topics.shared(COORDINATOR_GROUP, topics.ALL_HEARTBEATS)),
        Grant(Action.SUBSCRIBE, topics.shared(COORDINATOR_GROUP, topics.ALL_JOB_PROGRESS)),
        Grant(Action.PUBLISH, topics.ALL_ASSIGN),
        Grant(Action.PUBLISH, topics.ALL_CONTROL),
        Grant(Action.PUBLISH, topics.ALL_THREAD_EVENTS),
        # only to clear a revoked worker's retained status (an empty retained message)
        Grant(Action.PUBLISH, topics.ALL_STATUS),
        Grant(Action.PUBLISH, topics.FARM_INFO),
    ],
    WEBAPP: [
        Grant(Action.SUBSCRIBE, topics.ALL_JOB_EVENTS),
        Grant(Action.SUBSCRIBE, topics.ALL_JOB_PROGRESS),
        Grant(Action.SUBSCRIBE, topics.ALL_THREAD_EVENTS),
    ],
    OBSERVER: [Grant(Action.SUBSCRIBE, f"{TOPIC_ROOT.split('/')[0]}/#")],
}


def _matches(pattern: str, topic: str) -> bool:
    """MQTT matching of ``topic`` (or a requested filter, level by level) by ``pattern``.
    A ``+`` or ``#`` in a requested filter is matched only by the same or by ``#``."""
    want, have = pattern.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have):
            return False
        if level == "+":
            if have[i] == "#":
                return False
            continue
        if level != have[i]:
            return False
    return len(want) == len(have)


def allowed(grants: list[Grant], action: Action, topic: str) -> bool:
    """May an account with ``grants`` publish to ``topic`` / subscribe to filter ``topic``?"""
    if topic.startswith(topics.SHARE_PREFIX) and action is Action.SUBSCRIBE:
        # a shared subscription is granted by name, as Mosquitto's dynamic security does
        return any(g.action is action and g.filter == topic for g in grants)
    if topic.startswith("$"):
        return False  # $SYS, $CONTROL: never for farm accounts
    return any(g.action is action and _matches(g.filter, topic) for g in grants)


def grants_for(username: str | None) -> list[Grant]:
    """The grants of an authenticated account (a service name, else a worker id)."""
    if not username:
        return []
    if username in SERVICE_GRANTS:
        return SERVICE_GRANTS[username]
    if is_reserved(username):
        return []
    return worker_grants(username)
