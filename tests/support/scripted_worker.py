"""A worker written out by hand for tests: it logs in with a real worker's credentials,
announces itself like one (retained status, heartbeats) and hands the test each
assignment and control message, so the test decides exactly what goes on the wire
(duplicates, reordering)."""

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiomqtt
from pydantic import BaseModel, SecretStr

from farm_protocol import topics
from farm_protocol.acl import worker_client_id
from farm_protocol.codec import CONTROL, encode
from farm_protocol.payloads import (
    ControlMessage,
    Heartbeat,
    JobAssignment,
    JobChunk,
    RunningJob,
    WorkerStatus,
)
from farm_runtime.broker import BrokerSettings, make_client


class ScriptedWorker:
    def __init__(self, client: aiomqtt.Client, worker_id: str) -> None:
        self.client = client
        self.worker_id = worker_id
        self.session_id = uuid.uuid4().hex[:16]
        self.assignments: asyncio.Queue[JobAssignment] = asyncio.Queue()
        self.controls: asyncio.Queue[ControlMessage] = asyncio.Queue()
        self.running: dict[str, int] = {}
        self.threads: dict[str, str] = {}  # job -> its thread (in the job's topics)

    async def publish(self, job_id: str, event: BaseModel) -> None:
        """A live chunk on the job's topic; anything else on its progress topic."""
        thread_id = self.threads[job_id]
        if isinstance(event, JobChunk):
            topic = topics.job_events(self.worker_id, thread_id, job_id)
        else:
            topic = topics.job_progress(self.worker_id, thread_id, job_id)
        await self.client.publish(topic, encode(event), qos=topics.QOS_JOB_EVENTS)

    async def _announce(self) -> None:
        status = WorkerStatus(
            worker_id=self.worker_id,
            session_id=self.session_id,
            state="online",
            models=["llama3:latest"],
            capacity=4,
            at=time.time(),
        )
        await self.client.publish(
            topics.worker_status(self.worker_id), encode(status), qos=1, retain=True
        )

    async def _heartbeats(self) -> None:
        seq = 0
        while True:
            beat = Heartbeat(
                worker_id=self.worker_id,
                session_id=self.session_id,
                seq=seq,
                running=[RunningJob(job_id=j, attempt=a) for j, a in self.running.items()],
                at=time.time(),
            )
            await self.client.publish(topics.worker_heartbeat(self.worker_id), encode(beat))
            seq += 1
            await asyncio.sleep(0.5)

    async def _listen(self) -> None:
        async for message in self.client.messages:
            if message.topic.matches(topics.worker_assign(self.worker_id)):
                job = JobAssignment.model_validate_json(message.payload)
                self.running[job.job_id] = job.attempt
                self.threads[job.job_id] = job.thread_id
                await self.assignments.put(job)
            elif message.topic.matches(topics.worker_control(self.worker_id)):
                await self.controls.put(CONTROL.validate_json(message.payload))


@asynccontextmanager
async def scripted_worker(
    broker: BrokerSettings, worker_id: str, key: str
) -> AsyncIterator[ScriptedWorker]:
    login = broker.model_copy(update={"username": worker_id, "password": SecretStr(key)})
    async with make_client(login, identifier=worker_client_id(worker_id)) as client:
        worker = ScriptedWorker(client, worker_id)
        await client.subscribe(topics.worker_assign(worker_id), qos=1)
        await client.subscribe(topics.worker_control(worker_id), qos=1)
        await worker._announce()
        tasks = [asyncio.create_task(worker._heartbeats()), asyncio.create_task(worker._listen())]
        try:
            yield worker
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task
