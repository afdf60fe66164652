"""Duplicated and reordered chunks, end to end: a worker (scripted, with a real worker's
credentials) publishes its reply's chunks out of order and some twice. The coordinator
stores exactly the text (verified against the *done* checksum) and a browser's websocket
gets every chunk once, so the page assembles the same text. On Mosquitto and amqtt. Also
what the coordinator's stream of a reply survives: silence, and a message naming an
attempt the database does not know."""

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import websockets

from farm_protocol.payloads import JobAccepted, JobAssignment, JobChunk, JobDone
from llama_farm.ollama_sim.settings import SimSettings
from tests.support.brokers import RunningBroker
from tests.support.farm import Farm, new_thread, running_farm, until_final, wait_until, ws_url
from tests.support.scripted_worker import ScriptedWorker, scripted_worker

PIECES = [f"piece {i}, " for i in range(11)] + ["the end."]
TEXT = "".join(PIECES)
WIRE_ORDER = [0, 2, 1, 1, 3, 5, 4, 0, 6, 7, 9, 8, 8, 10, 11, 3, 11]


@asynccontextmanager
async def scripted_farm(
    tmp_path: Path, broker: RunningBroker
) -> AsyncIterator[tuple[Farm, ScriptedWorker]]:
    """A farm whose one worker is the test's script, with a real worker's credentials."""
    async with running_farm(tmp_path, broker, sim=SimSettings(), workers=0) as farm:
        coordinator = farm.coordinator
        info, key = await coordinator.runner.call(coordinator.registry.add, "scripted")
        if not coordinator.provisioner.managed:
            await broker.add_client(info.id, key)
        await coordinator.provisioner.worker_added(info.id, key)
        async with scripted_worker(broker.settings(), info.id, key) as worker:
            yield farm, worker


async def ask(browser: httpx.AsyncClient, thread_id: str) -> dict[str, Any]:
    """Send a message; its reply, queued."""
    sent = await browser.post(f"/api/threads/{thread_id}/messages", json={"text": "go"})
    assert sent.status_code == 201, sent.text
    reply: dict[str, Any] = sent.json()["reply"]
    return reply


def accepted(job: JobAssignment, worker: ScriptedWorker) -> JobAccepted:
    return JobAccepted(job_id=job.job_id, attempt=job.attempt, session_id=worker.session_id)


def chunk(job: JobAssignment, seq: int) -> JobChunk:
    return JobChunk(job_id=job.job_id, attempt=job.attempt, seq=seq, text=PIECES[seq])


def done(job: JobAssignment) -> JobDone:
    return JobDone(
        job_id=job.job_id,
        attempt=job.attempt,
        chunks=len(PIECES),
        chars=len(TEXT),
        sha256=hashlib.sha256(TEXT.encode()).hexdigest(),
    )


async def last_message(browser: httpx.AsyncClient, thread_id: str) -> dict[str, Any]:
    message: dict[str, Any] = (await browser.get(f"/api/threads/{thread_id}")).json()["messages"][
        -1
    ]
    return message


async def test_duplicated_and_reordered_chunks_make_the_exact_text(
    tmp_path: Path, broker: RunningBroker
) -> None:
    async with scripted_farm(tmp_path, broker) as (farm, worker):
        browser = farm.browser()
        thread_id = await new_thread(browser)
        cookie = browser.cookies.get("farm_session")
        async with websockets.connect(
            ws_url(farm, thread_id), additional_headers={"Cookie": f"farm_session={cookie}"}
        ) as socket:
            assert json.loads(await socket.recv())["type"] == "snapshot"
            reply = await ask(browser, thread_id)
            job = await asyncio.wait_for(worker.assignments.get(), timeout=10)
            assert job.job_id == reply["job_id"]
            await worker.publish(job.job_id, accepted(job, worker))
            for seq in WIRE_ORDER:
                await worker.publish(job.job_id, chunk(job, seq))
            await worker.publish(job.job_id, done(job))

            events, final = await until_final(socket, reply["message_id"], timeout_s=10)
            forwarded: dict[int, str] = {}
            for event in events:
                assert event["seq"] not in forwarded, f"chunk {event['seq']} sent twice"
                forwarded[event["seq"]] = event["text"]
        assert final["state"] == "done", final
        assert final["content"] == TEXT
        assert sorted(forwarded) == list(range(len(PIECES)))
        assert "".join(forwarded[s] for s in sorted(forwarded)) == TEXT
        stored = await last_message(browser, thread_id)
        assert stored["content"] == TEXT
        assert stored["state"] == "done"


async def test_a_stream_silent_for_long_is_let_go_and_resumes_from_the_database(
    tmp_path: Path, broker: RunningBroker
) -> None:
    """A coordinator lets go of a stream it has heard nothing of for a while, with its
    text written (another coordinator may have stopped it); if the worker speaks again
    the stream resumes from the stored text, and the reply still ends exact."""
    async with scripted_farm(tmp_path, broker) as (farm, worker):
        streams = farm.coordinator.streams
        streams.idle_s = 0.5
        browser = farm.browser()
        thread_id = await new_thread(browser)
        await ask(browser, thread_id)
        job = await asyncio.wait_for(worker.assignments.get(), timeout=10)
        await worker.publish(job.job_id, accepted(job, worker))
        for seq in range(6):
            await worker.publish(job.job_id, chunk(job, seq))

        async def written(text: str) -> bool:
            return bool((await last_message(browser, thread_id))["content"] == text)

        await wait_until(lambda: written("".join(PIECES[:6])), what="the first text")
        await wait_until(
            lambda: job.job_id not in streams.following(), what="the silent stream to be let go"
        )
        for seq in range(6, len(PIECES)):
            await worker.publish(job.job_id, chunk(job, seq))
        await worker.publish(job.job_id, done(job))
        await wait_until(lambda: ended(browser, thread_id), what="the reply to end")
        assert (await last_message(browser, thread_id))["content"] == TEXT


async def test_a_message_naming_a_later_attempt_does_not_reset_the_stream(
    tmp_path: Path, broker: RunningBroker
) -> None:
    """A chunk for an attempt the database does not know (a spoofed or confused message
    on the worker's topic) is dropped, and the stream received so far is kept: here it
    holds a *done* waiting for its last chunk, which then completes the reply."""
    async with scripted_farm(tmp_path, broker) as (farm, worker):
        browser = farm.browser()
        thread_id = await new_thread(browser)
        await ask(browser, thread_id)
        job = await asyncio.wait_for(worker.assignments.get(), timeout=10)
        last = len(PIECES) - 1
        events = [
            accepted(job, worker),
            *(chunk(job, seq) for seq in range(last)),
            done(job),
            JobChunk(job_id=job.job_id, attempt=99, seq=0, text="EVIL "),
            chunk(job, last),
        ]
        for event in events:
            await worker.publish(job.job_id, event)
        await wait_until(lambda: ended(browser, thread_id), what="the reply to end")
        assert (await last_message(browser, thread_id))["content"] == TEXT


async def ended(browser: httpx.AsyncClient, thread_id: str) -> bool:
    return bool((await last_message(browser, thread_id))["state"] == "done")
