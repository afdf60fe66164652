"""What the coordinator's HTTP routes work with, built once by the service."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from coordinator.chat.rate_limits import RateLimits
from coordinator.chat.stores import ChatStores
from coordinator.db.runner import DbRunner
from coordinator.jobs.admission import Admission
from coordinator.jobs.capacity import FleetCapacity
from coordinator.keys.api_keys import ApiKeyStore
from coordinator.metrics import Metrics
from coordinator.mqtt.bus import Bus
from coordinator.mqtt.provisioning import Provisioner
from coordinator.readiness import Readiness
from coordinator.workers.enrolment import Enrolments
from coordinator.workers.presence import WorkerPresence
from coordinator.workers.registry import WorkerRegistry
from farm_protocol.chat import MessageView


@dataclass(slots=True)
class Cached:
    """A response body computed at most once per ``max_age_s``, whoever asks."""

    max_age_s: float
    at: float = -float("inf")
    body: str = ""


@dataclass(frozen=True, slots=True)
class HttpContext:
    runner: DbRunner
    chat: ChatStores
    presence: WorkerPresence
    registry: WorkerRegistry
    api_keys: ApiKeyStore
    bus: Bus
    wake_dispatcher: Callable[[], None]
    cancel: Callable[[str, str], Awaitable[MessageView | None]]
    admission: Admission
    capacity: FleetCapacity
    limits: RateLimits
    metrics: Metrics
    provisioner: Provisioner
    service_token: str  # the webapp's bearer token on the chat and programmatic APIs
    admin_token: str  # the admin API's; empty keeps it closed
    default_models: list[str]
    max_queued: int
    grace_s: float
    job_lifetime_s: float  # the queue plus the reply deadline: no job lives longer
    readiness: Readiness
    enrolments: Enrolments
    public_url: str  # the chat's, and the broker's for workers: for join lines
    public_broker_url: str
    farm_page: Cached = field(default_factory=lambda: Cached(max_age_s=1.0))
