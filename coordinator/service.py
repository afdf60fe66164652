"""The coordinator's composition root: build everything from settings, run until stopped."""

import asyncio
import logging

import aiomqtt

from coordinator.chat.rate_limits import RateLimits, default_rules
from coordinator.chat.stores import ChatStores
from coordinator.db.database import migrate, open_database
from coordinator.db.runner import DbRunner
from coordinator.http.app import create_app
from coordinator.http.context import HttpContext
from coordinator.jobs.admission import Admission
from coordinator.jobs.cancellation import Canceller
from coordinator.jobs.capacity import FleetCapacity
from coordinator.jobs.dispatch import Dispatcher
from coordinator.jobs.janitor import Janitor, deadlines_from
from coordinator.jobs.records import Health
from coordinator.jobs.stores import JobStores
from coordinator.jobs.streams import JobStreams
from coordinator.keys.api_keys import ApiKeyStore
from coordinator.metrics import Metrics
from coordinator.mqtt.bus import Bus
from coordinator.mqtt.inbound import SUBSCRIPTIONS, Inbound
from coordinator.mqtt.provisioning import Provisioner
from coordinator.readiness import Readiness
from coordinator.settings import CoordinatorSettings
from coordinator.workers.enrolment import Enrolments
from coordinator.workers.presence import WorkerPresence
from coordinator.workers.registry import WorkerRegistry
from farm_runtime.broker import make_client, serve_session, stay_connected
from farm_runtime.http_serving import serve_app
from farm_runtime.lifecycle import run_until_stopped
from farm_runtime.outbox import Outbox

log = logging.getLogger(__name__)


class Coordinator:
    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = s = settings
        db = open_database(s.database_url)
        migrate(db)
        self.runner = DbRunner(db)
        self.chat = ChatStores.open(
            db,
            grace_s=s.worker_grace_s,
            key_backlog=s.api_key_backlog_per_slot,
            chat_backlog=s.chat_backlog,
        )
        self.jobs = JobStores.open(
            db,
            context_messages=s.context_messages,
            max_attempts=s.max_attempts,
            health=Health(s.quarantine_after, s.quarantine_s),
        )
        self.presence = WorkerPresence(db, grace_s=s.worker_grace_s)
        self.registry = WorkerRegistry(
            db, grace_s=s.worker_grace_s, key_secret=s.key_secret.get_secret_value()
        )
        self.provisioner = Provisioner(s)
        self.outbox = Outbox()
        self.bus = Bus(self.outbox)
        self.metrics = Metrics(db, s.worker_grace_s)
        self.admission = Admission(s.queue_target_s, s.queue_interval_s)
        self.capacity = FleetCapacity(s.queue_timeout_s, s.reply_estimate_s, s.admit_fraction)
        self.readiness = Readiness(self.runner)
        self._build_job_path()
        self.app = create_app(self._http_context(ApiKeyStore(db)))

    def _build_job_path(self) -> None:
        """Dispatch, the streams, the janitor, cancels, and what arrives from workers."""
        s, jobs, wake = self.settings, self.jobs, self._wake_dispatcher
        self.dispatcher = Dispatcher(
            self.runner, jobs.queue, self.presence, self.bus, self.admission, capacity=self.capacity
        )
        self.dispatcher.on_assigned = self.metrics.queue_wait.observe
        self.streams = JobStreams(
            self.runner, jobs.writes, jobs.endings, self.bus, wake, s.flush_interval_s
        )
        self.streams.on_first_token = self.metrics.time_to_first_token.observe
        self.streams.on_succeeded = self.metrics.count_tokens
        jobs.endings.on_ended = self.metrics.job_ended
        self.janitor = Janitor(
            self.runner, jobs.deadlines, deadlines_from(s), self.bus, self.streams.forget, wake
        )
        self.canceller = Canceller(self.runner, jobs.endings, self.streams, self.bus, wake)
        self.inbound = Inbound(
            self.runner, self.presence, jobs.writes, self.streams, self.bus, self._fleet_changed
        )

    def _wake_dispatcher(self) -> None:
        self.dispatcher.wake()

    def _fleet_changed(self) -> None:
        self.dispatcher.fleet_changed()

    def _http_context(self, api_keys: ApiKeyStore) -> HttpContext:
        s = self.settings
        return HttpContext(
            runner=self.runner,
            chat=self.chat,
            presence=self.presence,
            registry=self.registry,
            api_keys=api_keys,
            bus=self.bus,
            wake_dispatcher=self._wake_dispatcher,
            cancel=self.canceller.cancel,
            admission=self.admission,
            capacity=self.capacity,
            limits=RateLimits(self.runner.db, default_rules(s)),
            metrics=self.metrics,
            provisioner=self.provisioner,
            service_token=s.service_token.get_secret_value(),
            admin_token=s.admin_token.get_secret_value(),
            default_models=s.default_models,
            max_queued=s.max_queued,
            grace_s=s.worker_grace_s,
            job_lifetime_s=s.queue_timeout_s + s.reply_timeout_s,
            readiness=self.readiness,
            enrolments=Enrolments(self.runner.db, s.enrol_ttl_s),
            public_url=s.public_url,
            public_broker_url=s.public_broker_url,
        )

    async def _mqtt(self) -> None:
        def connect() -> aiomqtt.Client:
            return make_client(
                self.settings.broker,
                identifier=self.settings.coordinator_client_id,
                # A clean session: the broker keeps nothing for a coordinator that is gone.
                # A persistent one stayed in the shared subscription while it was away,
                # and Mosquitto went on handing it its turn of every worker's progress and
                # heartbeats (queued for nobody, or dropped). What a restarted coordinator
                # missed it asks the workers for (JobStreams.resume).
                clean_session=True,
            )

        said: set[asyncio.Task[None]] = set()

        def subscribed() -> None:
            self.readiness.broker.set()
            # each connection says again which protocol the farm speaks (a broker that
            # lost its retained messages learns it again)
            task = asyncio.create_task(self.bus.farm_info(), name="farm info")
            said.add(task)
            task.add_done_callback(said.discard)

        async def session(connected: aiomqtt.Client) -> None:
            try:
                await serve_session(
                    connected,
                    subscriptions=SUBSCRIPTIONS,
                    handle=self.inbound.handle,
                    outbox=self.outbox,
                    on_subscribed=subscribed,
                )
            finally:
                self.readiness.broker.clear()

        await stay_connected(connect, session, name="coordinator")

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        log.info("coordinator serving the chat API on http://%s:%d", s.http_host, s.http_port)
        await self.streams.resume()  # queued in the outbox until the broker connects
        try:
            await run_until_stopped(
                {
                    "mqtt": self._mqtt(),
                    "dispatcher": self.dispatcher.run(),
                    "flusher": self.streams.run_flusher(),
                    "janitor": self.janitor.run(s.sweep_interval_s),
                    "heartbeats": self.inbound.record_heartbeats(),
                    "broker accounts": self.provisioner.reconcile_forever(
                        self.runner, self.registry
                    ),
                    "http": serve_app(self.app, s.http_host, s.http_port, stop),
                },
                stop,
            )
        finally:
            await self.inbound.close()
            await self.streams.flush()
            self.runner.close()
            log.info("coordinator stopped")
