"""Duplicated and reordered chunks, end to end: a worker (scripted, with a real worker's
credentials) publishes its reply's chunks out of order and some twice. The coordinator
stores exactly the text (verified against the *done* checksum) and a browser's websocket
gets every chunk once, so the page assembles the same text. On Mosquitto and amqtt."""

import asyncio
import hashlib
import json
from pathlib import Path

import websockets

from farm_protocol.payloads import JobAccepted, JobChunk, JobDone
from llama_farm.ollama_sim.settings import SimSettings
from tests.brokers import RunningBroker
from tests.farm import new_thread, running_farm, until_final, wait_until, ws_url
from tests.scripted_worker import scripted_worker

PIECES = [f"piece {i}, " for i in range(11)] + ["the end."]
WIRE_ORDER = [0, 2, 1, 1, 3, 5, 4, 0, 6, 7, 9, 8, 8, 10, 11, 3, 11]


async def test_duplicated_and_reordered_chunks_make_the_exact_text(
    tmp_path: Path, broker: RunningBroker
) -> None:
    async with running_farm(tmp_path, broker, sim=SimSettings(), workers=0) as farm:
        coordinator = farm.coordinator
        info, key = await coordinator.runner.call(coordinator.workers.add, "scripted")
        if not coordinator.provisioner.managed:
            await broker.add_client(info.id, key)
        await coordinator.provisioner.worker_added(info.id, key)
        browser = farm.browser()
        thread_id = await new_thread(browser)
        cookie = browser.cookies.get("farm_session")
        async with (
            scripted_worker(broker.settings(), info.id, key) as worker,
            websockets.connect(
                ws_url(farm, thread_id), additional_headers={"Cookie": f"farm_session={cookie}"}
            ) as socket,
        ):
            assert json.loads(await socket.recv())["type"] == "snapshot"
            sent = await browser.post(f"/api/threads/{thread_id}/messages", json={"text": "go"})
            assert sent.status_code == 201, sent.text
            reply = sent.json()["reply"]
            job = await asyncio.wait_for(worker.assignments.get(), timeout=10)
            assert job.job_id == reply["job_id"]
            await worker.publish(
                job.job_id,
                JobAccepted(job_id=job.job_id, attempt=job.attempt, session_id=worker.session_id),
            )
            for seq in WIRE_ORDER:
                chunk = JobChunk(job_id=job.job_id, attempt=job.attempt, seq=seq, text=PIECES[seq])
                await worker.publish(job.job_id, chunk)
            text = "".join(PIECES)
            done = JobDone(
                job_id=job.job_id,
                attempt=job.attempt,
                chunks=len(PIECES),
                chars=len(text),
                sha256=hashlib.sha256(text.encode()).hexdigest(),
            )
            await worker.publish(job.job_id, done)

            events, final = await until_final(socket, reply["message_id"], timeout_s=10)
            forwarded: dict[int, str] = {}
            for event in events:
                assert event["seq"] not in forwarded, f"chunk {event['seq']} sent twice"
                forwarded[event["seq"]] = event["text"]
        assert final["state"] == "done", final
        assert final["content"] == text
        assert sorted(forwarded) == list(range(len(PIECES)))
        assert "".join(forwarded[s] for s in sorted(forwarded)) == text
        stored = (await browser.get(f"/api/threads/{thread_id}")).json()["messages"][-1]
        assert stored["content"] == text
        assert stored["state"] == "done"


async def test_a_stream_silent_for_long_is_let_go_and_resumes_from_the_database(
    tmp_path: Path, broker: RunningBroker
) -> None:
    """A coordinator lets go of a stream it has heard nothing of for a while, with its
    text written (another coordinator may have stopped it); if the worker speaks again
    the stream resumes from the stored text, and the reply still ends exact."""
    async with running_farm(tmp_path, broker, sim=SimSettings(), workers=0) as farm:
        coordinator = farm.coordinator
        coordinator.streams.idle_s = 0.5
        info, key = await coordinator.runner.call(coordinator.workers.add, "scripted")
        if not coordinator.provisioner.managed:
            await broker.add_client(info.id, key)
        await coordinator.provisioner.worker_added(info.id, key)
        browser = farm.browser()
        thread_id = await new_thread(browser)
        async with scripted_worker(broker.settings(), info.id, key) as worker:
            sent = await browser.post(f"/api/threads/{thread_id}/messages", json={"text": "go"})
            assert sent.status_code == 201, sent.text
            job = await asyncio.wait_for(worker.assignments.get(), timeout=10)
            await worker.publish(
                job.job_id,
                JobAccepted(job_id=job.job_id, attempt=job.attempt, session_id=worker.session_id),
            )
            for seq in range(6):
                chunk = JobChunk(job_id=job.job_id, attempt=job.attempt, seq=seq, text=PIECES[seq])
                await worker.publish(job.job_id, chunk)

            async def written(text: str) -> bool:
                last = (await browser.get(f"/api/threads/{thread_id}")).json()["messages"][-1]
                return bool(last["content"] == text)

            await wait_until(lambda: written("".join(PIECES[:6])), what="the first text")
            await wait_until(
                lambda: job.job_id not in coordinator.streams.following(),
                what="the silent stream to be let go",
            )
            for seq in range(6, len(PIECES)):
                chunk = JobChunk(job_id=job.job_id, attempt=job.attempt, seq=seq, text=PIECES[seq])
                await worker.publish(job.job_id, chunk)
            text = "".join(PIECES)
            done = JobDone(
                job_id=job.job_id,
                attempt=job.attempt,
                chunks=len(PIECES),
                chars=len(text),
                sha256=hashlib.sha256(text.encode()).hexdigest(),
            )
            await worker.publish(job.job_id, done)

            async def ended() -> bool:
                last = (await browser.get(f"/api/threads/{thread_id}")).json()["messages"][-1]
                return bool(last["state"] == "done")

            await wait_until(ended, what="the reply to end")
        stored = (await browser.get(f"/api/threads/{thread_id}")).json()["messages"][-1]
        assert stored["content"] == text


async def test_a_message_naming_a_later_attempt_does_not_reset_the_stream(
    tmp_path: Path, broker: RunningBroker
) -> None:
    """A chunk for an attempt the database does not know (a spoofed or confused message
    on the worker's topic) is dropped, and the stream received so far is kept: here it
    holds a *done* waiting for its last chunk, which then completes the reply."""
    async with running_farm(tmp_path, broker, sim=SimSettings(), workers=0) as farm:
        coordinator = farm.coordinator
        info, key = await coordinator.runner.call(coordinator.workers.add, "scripted")
        if not coordinator.provisioner.managed:
            await broker.add_client(info.id, key)
        await coordinator.provisioner.worker_added(info.id, key)
        browser = farm.browser()
        thread_id = await new_thread(browser)
        async with scripted_worker(broker.settings(), info.id, key) as worker:
            sent = await browser.post(f"/api/threads/{thread_id}/messages", json={"text": "go"})
            assert sent.status_code == 201, sent.text
            job = await asyncio.wait_for(worker.assignments.get(), timeout=10)
            text = "".join(PIECES)
            last = len(PIECES) - 1
            events = [
                JobAccepted(job_id=job.job_id, attempt=job.attempt, session_id=worker.session_id),
                *(
                    JobChunk(job_id=job.job_id, attempt=job.attempt, seq=seq, text=PIECES[seq])
                    for seq in range(last)
                ),
                JobDone(
                    job_id=job.job_id,
                    attempt=job.attempt,
                    chunks=len(PIECES),
                    chars=len(text),
                    sha256=hashlib.sha256(text.encode()).hexdigest(),
                ),
                JobChunk(job_id=job.job_id, attempt=99, seq=0, text="EVIL "),
                JobChunk(job_id=job.job_id, attempt=job.attempt, seq=last, text=PIECES[last]),
            ]
            for event in events:
                await worker.publish(job.job_id, event)

            async def ended() -> bool:
                reply = (await browser.get(f"/api/threads/{thread_id}")).json()["messages"][-1]
                return bool(reply["state"] == "done")

            await wait_until(ended, what="the reply to end")
        stored = (await browser.get(f"/api/threads/{thread_id}")).json()["messages"][-1]
        assert stored["content"] == text
