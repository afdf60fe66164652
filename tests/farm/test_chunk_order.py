"""Live chunks and checkpoints out of order, end to end: a worker (scripted, with a real
worker's credentials) publishes its reply's live chunks out of order and some twice, and
its checkpoints (which overlap) late, twice, or before the text they continue. The
coordinator stores exactly the text (verified against the *done* checksum), a *done*
that comes before the checkpoint it needs waits for it, a gap that does not fill is asked
of the worker, and a browser's websocket gets every chunk once. On Mosquitto and amqtt.
Also what the coordinator's hold on a job survives: silence, and a message naming an
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

from coordinator.db import sql
from farm_protocol.payloads import (
    JobAccepted,
    JobAssignment,
    JobCheckpoint,
    JobChunk,
    JobDone,
    JobReplay,
)
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


def checkpoint(job: JobAssignment, first: int, last: int, attempt: int = 0) -> JobCheckpoint:
    """The texts of chunks ``first`` to ``last``."""
    return JobCheckpoint(
        job_id=job.job_id,
        attempt=attempt or job.attempt,
        from_seq=first,
        texts=PIECES[first : last + 1],
    )


def done(job: JobAssignment, tail_from: int = 8) -> JobDone:
    return JobDone(
        job_id=job.job_id,
        attempt=job.attempt,
        chunks=len(PIECES),
        chars=len(TEXT),
        sha256=hashlib.sha256(TEXT.encode()).hexdigest(),
        from_seq=tail_from,
        texts=PIECES[tail_from:],
    )


async def last_message(browser: httpx.AsyncClient, thread_id: str) -> dict[str, Any]:
    message: dict[str, Any] = (await browser.get(f"/api/threads/{thread_id}")).json()["messages"][
        -1
    ]
    return message


async def ended(browser: httpx.AsyncClient, thread_id: str) -> bool:
    return bool((await last_message(browser, thread_id))["state"] == "done")


async def written(browser: httpx.AsyncClient, thread_id: str, text: str) -> bool:
    return bool((await last_message(browser, thread_id))["content"] == text)


async def asked_job(
    farm: Farm, worker: ScriptedWorker
) -> tuple[httpx.AsyncClient, str, JobAssignment]:
    """A browser's new thread, a message sent to it, and the scripted worker's assignment
    of its reply."""
    browser = farm.browser()
    thread_id = await new_thread(browser)
    await ask(browser, thread_id)
    job = await asyncio.wait_for(worker.assignments.get(), timeout=10)
    return browser, thread_id, job


async def test_reordered_and_repeated_chunks_and_checkpoints_make_the_exact_text(
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
            # a checkpoint before the text it continues, one alone, one twice, one late
            progress = [
                checkpoint(job, 5, 10),
                checkpoint(job, 0, 0),
                checkpoint(job, 0, 4),
                checkpoint(job, 0, 4),
            ]
            for seq in WIRE_ORDER:
                await worker.publish(job.job_id, chunk(job, seq))
                if seq % 3 == 0 and progress:
                    await worker.publish(job.job_id, progress.pop(0))
            for late in progress:
                await worker.publish(job.job_id, late)
            await worker.publish(job.job_id, done(job))
            await worker.publish(job.job_id, checkpoint(job, 1, 7))  # after the end

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


async def test_a_done_before_the_checkpoint_it_needs_waits_for_it(
    tmp_path: Path, broker: RunningBroker
) -> None:
    """With several coordinators, the *done* can be handled before the last checkpoint
    is written: it waits (the reply is not failed as incomplete), then ends exact."""
    async with scripted_farm(tmp_path, broker) as (farm, worker):
        browser, thread_id, job = await asked_job(farm, worker)
        await worker.publish(job.job_id, accepted(job, worker))
        await worker.publish(job.job_id, checkpoint(job, 0, 4))
        head = "".join(PIECES[:5])

        await wait_until(lambda: written(browser, thread_id, head), what="the first checkpoint")
        await worker.publish(job.job_id, done(job))  # its tail starts at chunk 8
        await asyncio.sleep(0.5)  # several flushes: the done must still be waiting
        waiting = await last_message(browser, thread_id)
        assert (waiting["state"], waiting["content"]) == ("generating", head)
        await worker.publish(job.job_id, checkpoint(job, 5, 10))
        await wait_until(lambda: ended(browser, thread_id), what="the reply to end")
        assert (await last_message(browser, thread_id))["content"] == TEXT


async def test_a_gap_that_does_not_fill_is_asked_of_the_worker(
    tmp_path: Path, broker: RunningBroker
) -> None:
    """A checkpoint that was lost (its coordinator died with it) leaves a gap: the worker
    is asked to replay from the first chunk missing, and its replay completes the text."""
    async with scripted_farm(tmp_path, broker) as (farm, worker):
        browser, thread_id, job = await asked_job(farm, worker)
        await worker.publish(job.job_id, accepted(job, worker))
        await worker.publish(job.job_id, checkpoint(job, 0, 2))
        await worker.publish(job.job_id, checkpoint(job, 6, 10))  # 3-5 were lost
        while True:
            asked = await asyncio.wait_for(worker.controls.get(), timeout=10)
            if isinstance(asked, JobReplay):
                break
        assert (asked.job_id, asked.attempt, asked.from_seq) == (job.job_id, job.attempt, 3)
        await worker.publish(job.job_id, accepted(job, worker))
        await worker.publish(job.job_id, checkpoint(job, 3, 10))
        await worker.publish(job.job_id, done(job))
        await wait_until(lambda: ended(browser, thread_id), what="the reply to end")
        assert (await last_message(browser, thread_id))["content"] == TEXT


async def test_a_silent_job_is_let_go_and_taken_up_again(
    tmp_path: Path, broker: RunningBroker
) -> None:
    """A coordinator lets go of a job it has heard nothing of for a while (another
    coordinator may have ended it); if the worker speaks again it is looked up again,
    and the reply still ends exact."""
    async with scripted_farm(tmp_path, broker) as (farm, worker):
        streams = farm.coordinator.streams
        streams.idle_s = 0.5
        browser, thread_id, job = await asked_job(farm, worker)
        await worker.publish(job.job_id, accepted(job, worker))
        await worker.publish(job.job_id, checkpoint(job, 0, 5))

        await wait_until(
            lambda: written(browser, thread_id, "".join(PIECES[:6])), what="the first text"
        )
        await wait_until(
            lambda: job.job_id not in streams.following(), what="the silent job to be let go"
        )
        await worker.publish(job.job_id, done(job, tail_from=6))
        await wait_until(lambda: ended(browser, thread_id), what="the reply to end")
        assert (await last_message(browser, thread_id))["content"] == TEXT


async def test_a_message_naming_a_later_attempt_does_not_reset_what_waits(
    tmp_path: Path, broker: RunningBroker
) -> None:
    """A checkpoint for an attempt the database does not know (a spoofed or confused
    message on the worker's topic) is dropped, and what this coordinator holds is kept:
    here a *done* waiting for the checkpoint before it, which then completes the reply."""
    async with scripted_farm(tmp_path, broker) as (farm, worker):
        browser, thread_id, job = await asked_job(farm, worker)
        events = [
            accepted(job, worker),
            checkpoint(job, 0, 3),
            done(job),
            JobCheckpoint(job_id=job.job_id, attempt=99, from_seq=0, texts=["EVIL "]),
            checkpoint(job, 2, 9),
        ]
        for event in events:
            await worker.publish(job.job_id, event)
        await wait_until(lambda: ended(browser, thread_id), what="the reply to end")
        assert (await last_message(browser, thread_id))["content"] == TEXT


async def test_a_running_job_gone_quiet_is_asked_to_replay(
    tmp_path: Path, broker: RunningBroker
) -> None:
    """A *done* that a coordinator died with (the broker counts it delivered) leaves the
    job running with nothing more coming: once it has been quiet for a while, the worker
    is asked to replay from the first chunk not stored, and its replay ends the reply."""
    async with scripted_farm(tmp_path, broker) as (farm, worker):
        farm.coordinator.streams.quiet_s = 0.5
        browser, thread_id, job = await asked_job(farm, worker)
        await worker.publish(job.job_id, accepted(job, worker))
        await worker.publish(job.job_id, checkpoint(job, 0, 3))
        head = "".join(PIECES[:4])
        await wait_until(lambda: written(browser, thread_id, head), what="the checkpoint")
        # the done went to a coordinator that died: never published here
        while True:
            asked = await asyncio.wait_for(worker.controls.get(), timeout=10)
            if isinstance(asked, JobReplay) and asked.from_seq == 4:
                break
        await worker.publish(job.job_id, done(job, tail_from=4))
        await wait_until(lambda: ended(browser, thread_id), what="the reply to end")
        assert (await last_message(browser, thread_id))["content"] == TEXT


async def test_a_lost_accepted_is_made_good_by_the_workers_heartbeat(
    tmp_path: Path, broker: RunningBroker
) -> None:
    """An *accepted* a coordinator died with: the worker's heartbeat lists the job, and a
    job still only assigned is accepted from it, instead of being taken back at the
    accept deadline from a worker that runs it."""
    async with scripted_farm(tmp_path, broker) as (farm, worker):
        _, _, job = await asked_job(farm, worker)  # the worker never says "accepted"
        runner = farm.coordinator.runner

        def state() -> str:
            row = sql.execute(runner.db, "SELECT state FROM job WHERE id = %s", (job.job_id,))
            return str(row.fetchone()[0])

        async def running() -> bool:
            return await runner.call(state) == "running"

        # well within the accept deadline (FARM_ACCEPT_TIMEOUT_S, 10 s)
        await wait_until(running, timeout_s=5, what="the heartbeat to accept the job")
