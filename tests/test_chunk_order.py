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
from tests.farm import new_thread, running_farm, until_final, ws_url
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
