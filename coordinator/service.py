"""The coordinator's composition root: build everything from settings, run until stopped."""

import asyncio
import logging

import aiomqtt

from coordinator.chat.rate_limits import RateLimits, default_rules
from coordinator.chat.store import ChatStore
from coordinator.db.database import migrate, open_database
from coordinator.db.runner import DbRunner
from coordinator.http.admin_routes import AdminContext
from coordinator.http.api_routes import ApiContext
from coordinator.http.app import create_app
from coordinator.http.chat_routes import ChatContext
from coordinator.jobs.admission import Admission
from coordinator.jobs.cancellation import Canceller
from coordinator.jobs.dispatch import Dispatcher
from coordinator.jobs.janitor import Janitor, deadlines_from
from coordinator.jobs.store import Health, JobStore
from coordinator.jobs.streams import JobStreams
from coordinator.keys.api_keys import ApiKeyStore
from coordinator.metrics import Metrics
from coordinator.mqtt.inbound import SUBSCRIPTIONS, Inbound
from coordinator.mqtt.provisioning import Provisioner
from coordinator.settings import CoordinatorSettings
from coordinator.workers.store import WorkerStore
from farm_protocol import topics
from farm_protocol.chat import MemberView, MessageView
from farm_protocol.codec import encode
from farm_protocol.payloads import ControlMessage, MembersEvent, MessageEvent
from farm_runtime.broker import make_client, serve_session, stay_connected
from farm_runtime.http_serving import serve_app
from farm_runtime.lifecycle import run_until_stopped
from farm_runtime.outbox import Outbox

log = logging.getLogger(__name__)


class Coordinator:
    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        db = open_database(settings.database_url)
        migrate(db)
        self.runner = DbRunner(db)
        self.chat = ChatStore(db)
        self.jobs = JobStore(
            db,
            context_messages=settings.context_messages,
            max_attempts=settings.max_attempts,
            health=Health(settings.quarantine_after, settings.quarantine_s),
        )
        self.workers = WorkerStore(
            db, grace_s=settings.worker_grace_s, key_secret=settings.key_secret.get_secret_value()
        )
        self.provisioner = Provisioner(settings)
        self.outbox = Outbox()
        self.metrics = Metrics(settings.worker_grace_s)
        self.admission = Admission(settings.queue_target_s, settings.queue_interval_s)
        self.dispatcher = Dispatcher(
            self.runner,
            self.jobs,
            self.workers,
            self.outbox,
            self.admission,
            self.publish_message,
        )
        self.streams = JobStreams(
            self.runner,
            self.jobs,
            self.publish_message,
            self.dispatcher.kick,
            settings.flush_interval_s,
            self.send_control,
        )
        self.janitor = Janitor(
            self.runner,
            self.jobs,
            deadlines_from(settings),
            self.outbox,
            self.publish_message,
            self.streams.forget,
            self.dispatcher.kick,
        )
        self.dispatcher.on_assigned = self.metrics.queue_wait.observe
        self.streams.on_first_token = self.metrics.time_to_first_token.observe
        self.canceller = Canceller(
            self.runner,
            self.jobs,
            self.streams,
            self.outbox,
            self.publish_message,
            self.dispatcher.kick,
        )
        self.inbound = Inbound(
            self.runner, self.workers, self.jobs, self.streams, self.dispatcher, self.send_control
        )
        self.app = create_app(
            ChatContext(
                runner=self.runner,
                chat=self.chat,
                workers=self.workers,
                service_token=settings.service_token.get_secret_value(),
                default_models=settings.default_models,
                publish_message=self.publish_message,
                job_queued=self.dispatcher.kick,
                admission=self.admission,
                max_queued=settings.max_queued,
                cancel=self.canceller.cancel,
                metrics=self.metrics,
                limits=RateLimits(default_rules(settings)),
                publish_members=self.publish_members,
                job_lifetime_s=settings.queue_timeout_s + settings.reply_timeout_s,
            ),
            AdminContext(
                runner=self.runner,
                workers=self.workers,
                api_keys=ApiKeyStore(db),
                outbox=self.outbox,
                admin_token=settings.admin_token.get_secret_value(),
                grace_s=settings.worker_grace_s,
                admission=self.admission,
                cancel=self.canceller.cancel,
                provisioner=self.provisioner,
            ),
            ApiContext(
                runner=self.runner,
                chat=self.chat,
                keys=ApiKeyStore(db),
                workers=self.workers,
                service_token=settings.service_token.get_secret_value(),
                admission=self.admission,
                max_queued=settings.max_queued,
                metrics=self.metrics,
                default_models=settings.default_models,
                publish_message=self.publish_message,
                job_queued=self.dispatcher.kick,
            ),
        )

    async def send_control(self, worker_id: str, command: ControlMessage) -> None:
        await self.outbox.put(
            topics.worker_control(worker_id), encode(command), qos=topics.QOS_CONTROL
        )

    async def publish_message(self, view: MessageView) -> None:
        await self.outbox.put(
            topics.thread_events(view.thread_id),
            encode(MessageEvent(message=view)),
            qos=topics.QOS_THREAD_EVENTS,
        )

    async def publish_members(self, thread_id: str, members: list[MemberView]) -> None:
        await self.outbox.put(
            topics.thread_events(thread_id),
            encode(MembersEvent(thread_id=thread_id, members=members)),
            qos=topics.QOS_THREAD_EVENTS,
        )

    async def _mqtt(self) -> None:
        def connect() -> aiomqtt.Client:
            return make_client(
                self.settings.broker,
                identifier=self.settings.coordinator_client_id,
                clean_session=False,  # chunks published while we restart wait for us
            )

        async def session(connected: aiomqtt.Client) -> None:
            await serve_session(
                connected,
                subscriptions=SUBSCRIPTIONS,
                handle=self.inbound.handle,
                outbox=self.outbox,
            )

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
                        self.runner, self.workers
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
