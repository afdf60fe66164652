"""The worker's composition root: connection, presence, jobs, and a graceful stop."""

import asyncio
import contextlib
import logging

import aiomqtt

from farm_protocol import topics
from farm_protocol.codec import CONTROL, adapter_for, decode, encode
from farm_protocol.errors import ProtocolError
from farm_protocol.ids import check_id, new_session_id
from farm_protocol.models import normalize_model
from farm_protocol.payloads import (
    Drain,
    FarmInfo,
    JobAssignment,
    JobCancel,
    JobFailed,
    JobReplay,
    RunningJob,
    WorkerState,
    WorkerStatus,
)
from farm_protocol.version import PROTOCOL_VERSION
from farm_runtime.broker import Subscription, make_client, serve_session, stay_connected
from farm_runtime.client_calls import publish
from farm_runtime.logs import DropLog
from farm_runtime.outbox import Outbox
from fleet_worker.job_runner import JobRunner
from fleet_worker.llm import Inventory, LlmError, OllamaBackend
from fleet_worker.presence import heartbeat, last_will, served_models, status_payload
from fleet_worker.settings import WorkerSettings

log = logging.getLogger(__name__)

_ASSIGNMENT = adapter_for(JobAssignment)
_FARM_INFO = adapter_for(FarmInfo)


class WorkerConfigError(Exception):
    """The worker cannot start with these settings."""


class FleetWorker:
    def __init__(self, settings: WorkerSettings, *, drain_grace_s: float = 30.0) -> None:
        if not settings.worker_id:
            raise WorkerConfigError("FARM_WORKER_ID is not set (see `llama-farm workers add`)")
        self.worker_id = check_id(settings.worker_id, "worker id")
        self.settings = settings
        self.drain_grace_s = drain_grace_s
        self.backend = OllamaBackend(
            settings.ollama_host,
            first_token_timeout_s=settings.first_token_timeout_s,
            token_timeout_s=settings.token_timeout_s,
        )
        self.outbox = Outbox()
        self._dropped = DropLog(log)
        self.runner = JobRunner(
            self.worker_id, self.backend, self.outbox, settings, self._ensure_model
        )
        self.inventory: Inventory | None = None
        self.unavailable_reason = "checking Ollama"
        self.draining = False
        self.session_id = ""
        self.jobs: dict[str, tuple[int, asyncio.Task[bool]]] = {}
        self.totals = {"succeeded": 0, "failed": 0, "handed_back": 0}
        self._client: aiomqtt.Client | None = None
        self._pull_lock = asyncio.Lock()
        # set (in run) when the farm speaks another protocol: the worker stops, saying so
        self.incompatible: asyncio.Future[str] | None = None

    # --- state ---------------------------------------------------------------------------

    def state(self) -> WorkerState:
        if self.draining:
            return "draining"
        return "unavailable" if self.unavailable_reason else "online"

    def models(self) -> list[str]:
        return served_models(self.settings.models, self.inventory)

    async def publish_status(self) -> None:
        """Publish the retained status now, if connected (each connect publishes it too)."""
        client = self._client
        if client is None:
            return
        status = status_payload(
            self.worker_id,
            self.session_id,
            self.state(),
            models=self.models(),
            inventory=self.inventory,
            capacity=self.settings.concurrency,
            reason=self.unavailable_reason,
        )
        await self._send_status(client, status)

    async def _send_status(self, client: aiomqtt.Client, status: WorkerStatus) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await publish(
                client,
                topics.worker_status(self.worker_id),
                encode(status),
                qos=topics.QOS_STATUS,
                retain=True,
            )

    # --- the broker connection ----------------------------------------------------------

    def _connect(self) -> aiomqtt.Client:
        self.session_id = new_session_id()
        return make_client(
            self.settings.broker_login(),
            identifier=f"worker-{self.worker_id}",
            will=last_will(self.worker_id, self.session_id),
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        self._client = client
        beats: list[asyncio.Task[None]] = []

        def subscribed() -> None:
            beats.append(asyncio.create_task(self._heartbeats(client), name="heartbeats"))

        try:
            await serve_session(
                client,
                subscriptions=[
                    Subscription(topics.worker_assign(self.worker_id), topics.QOS_ASSIGN),
                    Subscription(topics.worker_control(self.worker_id), topics.QOS_CONTROL),
                    # optional: a broker account made before farm/info existed lacks
                    # it until the coordinator's next reconcile
                    Subscription(topics.FARM_INFO, topics.QOS_INFO, optional=True),
                ],
                handle=self._handle,
                outbox=self.outbox,
                on_subscribed=subscribed,
            )
        finally:
            self._client = None
            for task in beats:
                task.cancel()
            await asyncio.gather(*beats, return_exceptions=True)

    async def _heartbeats(self, client: aiomqtt.Client) -> None:
        """Heartbeats for this connection. The first goes out before the status: a worker
        back after a long cut may still run jobs that have moved on, and a coordinator
        told of them first stops them before it sends new work on the status (the
        refusals "at capacity" that followed had used up a new job's attempts, and the
        stop sent to the old connection was lost). Both follow the subscriptions, so no
        assignment reaches a connection that does not listen yet."""
        seq = 0
        while True:
            running = [RunningJob(job_id=j, attempt=a) for j, (a, _) in self.jobs.items()]
            with contextlib.suppress(aiomqtt.MqttError):
                await publish(
                    client,
                    topics.worker_heartbeat(self.worker_id),
                    heartbeat(self.worker_id, self.session_id, seq, running),
                    qos=topics.QOS_HEARTBEAT,
                )
            if seq == 0:
                await self.publish_status()
            seq += 1
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _handle(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        try:
            if topic == topics.worker_assign(self.worker_id):
                await self._on_assign(decode(_ASSIGNMENT, message.payload))
            elif topic == topics.worker_control(self.worker_id):
                await self._on_control(decode(CONTROL, message.payload))
            elif topic == topics.FARM_INFO:
                self._on_farm_info(decode(_FARM_INFO, message.payload))
            else:
                raise ProtocolError(f"unexpected topic {topic}")
        except ProtocolError as exc:
            self._dropped.message(topic, topic, exc, message.payload)

    def _on_farm_info(self, info: FarmInfo) -> None:
        """The farm speaks another protocol: nothing it sends can reach this worker, and
        nothing this worker sends reaches it. Stop, and say what to upgrade."""
        if info.protocol == PROTOCOL_VERSION:
            return
        if self.incompatible is None or self.incompatible.done():
            return
        if info.protocol > PROTOCOL_VERSION:
            advice = (
                f"upgrade this worker (it speaks farm protocol {PROTOCOL_VERSION}; the farm's"
                f" coordinators speak {info.protocol}, llama-farm {info.version or '?'}):"
                " pipx upgrade llama-farm, then start it again"
            )
        else:
            advice = (
                f"this worker speaks farm protocol {PROTOCOL_VERSION}, newer than the farm's"
                f" {info.protocol} (llama-farm {info.version or '?'}): ask the farm's admin to"
                " upgrade, or install the farm's version here"
            )
        log.error("%s", advice)
        self.incompatible.set_result(advice)

    # --- jobs ----------------------------------------------------------------------------

    def _refusal(self, job: JobAssignment) -> str | None:
        if self.draining:
            return "the worker is shutting down"
        if self.unavailable_reason:
            return self.unavailable_reason
        if len(self.jobs) >= self.settings.concurrency:
            return "the worker is at capacity"
        if normalize_model(job.model) not in self.models():
            return f"this worker does not serve {job.model}"
        return None

    async def _on_assign(self, job: JobAssignment) -> None:
        if job.job_id in self.jobs:
            return  # a QoS1 redelivery of a job we already run
        reason = self._refusal(job)
        if reason is not None:
            log.info("refused job %s: %s", job.job_id, reason)
            refusal = JobFailed(
                job_id=job.job_id, attempt=job.attempt, reason=reason, retryable=True
            )
            await self.outbox.put(
                topics.job_progress(self.worker_id, job.thread_id, job.job_id),
                encode(refusal),
                qos=topics.QOS_JOB_EVENTS,
            )
            return
        task = asyncio.create_task(self._run(job), name=f"job-{job.job_id}")
        self.jobs[job.job_id] = (job.attempt, task)

    async def _run(self, job: JobAssignment) -> bool:
        try:
            ok = await self.runner.run(job, self.session_id)
        except asyncio.CancelledError:
            self.totals["handed_back" if self.runner.stopping else "failed"] += 1
            raise
        finally:
            self.jobs.pop(job.job_id, None)
        self.totals["succeeded" if ok else "failed"] += 1
        return ok

    async def _on_control(self, command: JobCancel | Drain | JobReplay) -> None:
        match command:
            case JobCancel():
                entry = self.jobs.get(command.job_id)
                if entry is not None and entry[0] == command.attempt:
                    log.info("cancelling job %s: %s", command.job_id, command.reason)
                    entry[1].cancel()
                    # The slot is free now: the coordinator may already be sending the
                    # next job, right behind this cancel.
                    del self.jobs[command.job_id]
            case Drain():
                log.info("drain requested: %s", command.reason)
                self.draining = True
                await self.publish_status()
            case JobReplay():
                await self._replay(command)

    async def _replay(self, command: JobReplay) -> None:
        topic = topics.job_progress(self.worker_id, command.thread_id, command.job_id)
        events = self.runner.transcripts.replay(command.job_id, command.attempt, command.from_seq)
        if events is None:
            log.info("asked to replay job %s, which this worker does not have", command.job_id)
            lost = JobFailed(
                job_id=command.job_id,
                attempt=command.attempt,
                reason="the worker no longer has this job",
                retryable=True,
            )
            await self.outbox.put(topic, encode(lost), qos=topics.QOS_JOB_EVENTS)
            return
        log.info("replaying job %s from chunk %d", command.job_id, command.from_seq)
        for event in events:
            await self.outbox.put(topic, encode(event), qos=topics.QOS_JOB_EVENTS)

    async def _ensure_model(self, model: str) -> None:
        """Pull a configured model Ollama does not have yet (as the original did)."""
        wanted = normalize_model(model)
        if self.inventory is not None and wanted in self.inventory.models:
            return
        if not self.settings.pull_missing:
            raise LlmError(f"{model} is not pulled on this worker", retryable=True)
        async with self._pull_lock:
            await self.backend.pull(model)
            self.inventory = await self.backend.inventory()

    # --- Ollama inventory ----------------------------------------------------------------

    async def _watch_ollama(self) -> None:
        while True:
            before = (self.inventory, self.unavailable_reason)
            try:
                self.inventory = await self.backend.inventory()
                self.unavailable_reason = ""
            except LlmError as exc:
                if not self.unavailable_reason or self.unavailable_reason == "checking Ollama":
                    log.warning("worker unavailable: %s", exc.reason)
                self.unavailable_reason = exc.reason
            if (self.inventory, self.unavailable_reason) != before:
                await self.publish_status()
            await asyncio.sleep(2.0 if self.unavailable_reason else self.settings.inventory_s)

    # --- lifetime ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop``; then drain: no new jobs, running ones get a grace period,
        the rest are reported failed so the coordinator can retry them elsewhere."""
        self.incompatible = incompatible = asyncio.get_running_loop().create_future()
        mqtt = asyncio.create_task(
            stay_connected(self._connect, self._session, name=f"worker {self.worker_id}"),
            name="mqtt",
        )
        ollama_watch = asyncio.create_task(self._watch_ollama(), name="ollama-watch")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait(
            {mqtt, ollama_watch, stopper, incompatible}, return_when=asyncio.FIRST_COMPLETED
        )
        try:
            if stopper in done or incompatible in done:
                await self._drain()
        finally:
            for task in (mqtt, ollama_watch, stopper):
                task.cancel()
            results = await asyncio.gather(mqtt, ollama_watch, return_exceptions=True)
            await self.backend.close()
        if incompatible.done():
            raise WorkerConfigError(incompatible.result())
        for result in results:
            if isinstance(result, Exception):
                raise result
        t = self.totals
        log.info(
            "worker %s stopped: %d succeeded, %d failed, %d handed back",
            self.worker_id,
            t["succeeded"],
            t["failed"],
            t["handed_back"],
        )

    async def _drain(self) -> None:
        self.draining = True
        await self.publish_status()
        running = [task for _, task in self.jobs.values()]
        if running:
            log.info(
                "draining: waiting up to %.0fs for %d job(s)", self.drain_grace_s, len(running)
            )
            await asyncio.wait(running, timeout=self.drain_grace_s)
        self.runner.stopping = True
        leftovers = [task for _, task in self.jobs.values()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        await self._say_goodbye()

    async def _say_goodbye(self, timeout_s: float = 3.0) -> None:
        """Deliver what is queued, then a retained 'offline' for this session."""
        if self._client is not None:
            await self.outbox.drained(timeout_s)
        client = self._client
        if client is not None:
            death = status_payload(
                self.worker_id,
                self.session_id,
                "offline",
                models=[],
                inventory=None,
                capacity=0,
                reason="stopped",
            )
            await self._send_status(client, death)
