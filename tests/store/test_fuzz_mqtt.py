"""Property-based fuzzing of every inbound MQTT handler: the coordinator's (status,
heartbeats, job events), the webapp bridge's (job and thread events) and the worker's
(assignments, control). Topics and payloads are generated: random bytes, random JSON, and
valid payloads with one field broken, dropped or added, on the right topic, a neighbour's
topic or a made-up one. Whatever arrives: no exception escapes the handler, and nothing
a non-holder sends reaches a stored reply. The handlers run on a real SQLite file."""

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from coordinator.chat.stores import ChatStores
from coordinator.db.tables import Job, Message, Worker
from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from farm_protocol import topics
from farm_protocol.browser import ChunkEvent
from farm_protocol.chat import MessageState
from farm_protocol.codec import JOB_EVENT, decode
from fleet_worker.service import FleetWorker
from fleet_worker.settings import WorkerSettings
from tests.support.fuzzing import FUZZ, json_values
from tests.support.received import mqtt
from tests.support.stores import add_worker
from webapp.bridge import Bridge

JSON = json_values(allow_nan=True)
EVIL = "EVIL"  # the text of every chunk a non-holder sends


def valid_payloads(job_id: str, worker_id: str, thread_id: str) -> list[dict[str, Any]]:
    now = time.time()
    view = {
        "message_id": "m1",
        "thread_id": thread_id,
        "role": "assistant",
        "author": "llama3",
        "content": "hello",
        "state": "generating",
        "job_id": job_id,
        # The coordinator's word on who holds the job (only it may publish thread events):
        # always the holder, w1. Naming another would hand the job over, rightly letting
        # that worker's chunks through (a flaky failure when one example named w2).
        "worker_id": "w1",
        "attempt": 1,
        "created_at": now,
    }
    return [
        {"kind": "accepted", "job_id": job_id, "attempt": 1, "session_id": "s1"},
        {"kind": "chunk", "job_id": job_id, "attempt": 1, "seq": 0, "text": "hello"},
        {
            "kind": "done",
            "job_id": job_id,
            "attempt": 1,
            "chunks": 1,
            "chars": 5,
            "sha256": "0" * 64,
        },
        {"kind": "failed", "job_id": job_id, "attempt": 1, "reason": "x", "retryable": True},
        {"kind": "checkpoint", "job_id": job_id, "attempt": 1, "from_seq": 0, "texts": ["hello"]},
        {
            "kind": "status",
            "worker_id": worker_id,
            "session_id": "s1",
            "state": "online",
            "models": ["llama3:latest"],
            "capacity": 2,
            "at": now,
        },
        {
            "kind": "heartbeat",
            "worker_id": worker_id,
            "session_id": "s1",
            "seq": 3,
            "running": [{"job_id": job_id, "attempt": 1}],
            "at": now,
        },
        {
            "kind": "assign",
            "job_id": job_id,
            "thread_id": thread_id,
            "attempt": 1,
            "model": "llama3",
            "messages": [{"role": "user", "content": "hi"}],
            "issued_at": now,
        },
        {"kind": "cancel", "job_id": job_id, "attempt": 1},
        {"kind": "drain"},
        {"kind": "replay", "job_id": job_id, "thread_id": thread_id, "attempt": 1, "from_seq": 0},
        {"kind": "message", "message": view},
        {"kind": "members", "thread_id": thread_id, "members": [{"user_id": "u", "name": "n"}]},
    ]


@st.composite
def payloads(draw: st.DrawFn, job_id: str, worker_id: str, thread_id: str) -> bytes:
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(st.binary(max_size=300))
    if choice == 1:
        return json.dumps(draw(JSON)).encode()
    base = dict(draw(st.sampled_from(valid_payloads(job_id, worker_id, thread_id))))
    if choice == 3 and base:
        base.pop(draw(st.sampled_from(sorted(base))))
    elif choice == 4:
        base[draw(st.sampled_from(sorted(base)))] = draw(JSON)
    elif choice == 5:
        base[draw(st.text(max_size=8))] = draw(JSON)
    if base.get("kind") == "chunk" and worker_id != "w1":
        base["text"] = EVIL
    if base.get("kind") in ("checkpoint", "done", "failed") and worker_id != "w1":
        base["texts"] = [EVIL]
    return json.dumps(base).encode()


def worker_topics(worker_id: str, job_id: str, thread_id: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            topics.worker_status(worker_id),
            topics.worker_heartbeat(worker_id),
            topics.job_events(worker_id, thread_id, job_id),
            topics.job_events(worker_id, thread_id, "otherjob"),
            topics.job_events(worker_id, "otherthread", job_id),
            topics.job_progress(worker_id, thread_id, job_id),
            topics.job_progress(worker_id, thread_id, "otherjob"),
            topics.worker_assign(worker_id),
            topics.worker_control(worker_id),
        ]
    ) | st.text(min_size=1, max_size=80).filter(lambda t: not set(t) & {"+", "#", "\x00"})


@st.composite
def inbound(draw: st.DrawFn, job_id: str, thread_id: str) -> tuple[str, bytes]:
    """A message as the coordinator or webapp could receive it: from the job's holder
    (w1), a neighbour (w2, online), a worker the farm does not know, or anywhere."""
    worker_id = draw(st.sampled_from(["w1", "w2", "ghost"]))
    topic = draw(
        worker_topics(worker_id, job_id, thread_id) | st.just(topics.thread_events(thread_id))
    )
    return topic, draw(payloads(job_id, worker_id, thread_id))


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    c = Coordinator(
        CoordinatorSettings(
            database_url=f"sqlite:///{tmp_path / 'fuzz.sqlite3'}",
            service_token=SecretStr("t"),
        )
    )
    yield c
    c.runner.close()


def held_job(coordinator: Coordinator) -> tuple[str, str]:
    """A reply streaming from w1 (attempt 1), the workers as they were at the start (a
    fuzzed status may have changed them)."""
    Worker.update(
        state="online",
        session_id="s1",
        capacity=100_000,
        last_seen=time.time() + 3600,
        quarantined_until=None,
        failures=0,
        revoked_at=None,
    ).execute()
    chat = ChatStores.open(coordinator.runner.db)
    user = chat.identity.session_user(uuid.uuid4().hex * 2)
    thread = chat.threads.create_thread(user.user_id, "")
    new = chat.requests.send_message(user.user_id, thread.thread_id, "hi", "llama3")
    assert coordinator.jobs.queue.claim(new.job_id, "w1", 100_000) is not None
    assert coordinator.jobs.writes.accept(new.job_id, 1, "w1")
    return new.job_id, thread.thread_id


async def settle(coordinator: Coordinator) -> None:
    await coordinator.streams.flush()


def test_the_coordinators_handlers_survive_anything(
    coordinator: Coordinator, loop: asyncio.AbstractEventLoop
) -> None:
    add_worker("w1", capacity=100)
    add_worker("w2", capacity=100)
    Worker.update(session_id="s1").execute()

    @FUZZ
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        job_id, thread_id = loop.run_until_complete(coordinator.runner.call(held_job, coordinator))
        batch = data.draw(st.lists(inbound(job_id, thread_id), min_size=1, max_size=6))
        for topic, payload in batch:
            loop.run_until_complete(coordinator.inbound.process(mqtt(topic, payload)))
        loop.run_until_complete(settle(coordinator))

        def check() -> None:
            job = Job.get_by_id(job_id)
            message = Message.get_by_id(job.message_id)
            assert job.state in (
                "queued",
                "assigned",
                "running",
                "succeeded",
                "failed",
                "timed_out",
                "cancelled",
            )
            MessageState(message.state)
            assert EVIL not in message.content, "a non-holder's text reached a reply"
            assert Worker.select().count() == 2, "a message created a worker"

        loop.run_until_complete(coordinator.runner.call(check))

    run()


def test_the_bridge_survives_anything() -> None:
    bridge = Bridge(queue_size=10_000)
    sub = asyncio.run(bridge.subscribe("t1"))
    bridge.learn_holder("j1", "w1", 1)
    bridge.watch_job("j1", "t1")

    @FUZZ
    @given(batch=st.lists(inbound("j1", "t1"), min_size=1, max_size=6))
    def run(batch: list[tuple[str, bytes]]) -> None:
        for topic, payload in batch:
            bridge.handle(mqtt(topic, payload))
        while not sub.queue.empty():
            event = sub.queue.get_nowait()
            assert event is not None  # nothing asks this browser to resync
            json.loads(event.model_dump_json())  # what goes to a browser is always plain JSON
            assert event.type in ("message", "members", "chunk")
            if isinstance(event, ChunkEvent) and event.job_id == "j1" and event.attempt == 1:
                assert event.text != EVIL, "a non-holder's chunk reached a browser"

    run()


def test_the_workers_handler_survives_anything(loop: asyncio.AbstractEventLoop) -> None:
    worker = FleetWorker(
        WorkerSettings(
            worker_id="w1",
            api_key=SecretStr("k"),
            ollama_host="http://127.0.0.1:9",  # nothing answers: jobs fail fast
            models=["llama3"],
            pull_missing=False,
        ),
        drain_grace_s=0.1,
    )

    @FUZZ
    @given(
        batch=st.lists(
            st.tuples(worker_topics("w1", "j1", "t1"), payloads("j1", "w1", "t1")),
            min_size=1,
            max_size=6,
        )
    )
    def run(batch: list[tuple[str, bytes]]) -> None:
        worker.draining = False
        worker.unavailable_reason = ""
        for topic, payload in batch:
            loop.run_until_complete(worker._handle(mqtt(topic, payload)))
        tasks = [task for _, task in worker.jobs.values()]
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        # Everything the worker answered is a well-formed job event.
        while worker.outbox.pending():
            item = worker.outbox._queue.get_nowait()
            decode(JOB_EVENT, item.payload)

    run()
