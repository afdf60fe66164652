"""The worker as a real process under faults, against a real Mosquitto and the simulator
reached through the real ollama client: kill -9 mid-stream, SIGTERM drain, a broker
restart (SIGTERM or kill -9) mid-stream, and every simulator fault. Each ends with every
job in a clear state."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from coordinator.jobs import reports
from farm_runtime.http_serving import serve_app
from llama_farm.ollama_sim.app import create_sim_app
from llama_farm.ollama_sim.settings import SimSettings
from llama_farm.ports import free_port
from tests.support.brokers import RunningBroker, broker_of
from tests.support.farm import Farm, new_thread, running_farm, wait_until, ws_url

GRACE_S = 3.0  # the coordinator's worker grace period in these tests


@asynccontextmanager
async def farm_without_workers(
    tmp_path: Path, sim: SimSettings
) -> AsyncIterator[tuple[Farm, RunningBroker]]:
    async with (
        broker_of("mosquitto") as broker,
        running_farm(
            tmp_path, broker, sim=sim, workers=0, coordinator_settings={"worker_grace_s": GRACE_S}
        ) as farm,
    ):
        yield farm, broker


@asynccontextmanager
async def worker_process(
    farm: Farm,
    broker: RunningBroker,
    tmp_path: Path,
    *,
    concurrency: int = 1,
    grace_s: float = 5,
    ollama_host: str | None = None,
    broker_url: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[subprocess.Popen[bytes]]:
    coordinator = farm.coordinator
    info, key = await coordinator.runner.call(coordinator.registry.add, "process worker")
    await coordinator.provisioner.worker_added(info.id, key)
    env = dict(
        os.environ,
        FARM_BROKER__URL=broker_url or broker.settings().url,
        FARM_WORKER_ID=info.id,
        FARM_API_KEY=key,
        FARM_OLLAMA_HOST=ollama_host or farm.sim_url,
        FARM_CONCURRENCY=str(concurrency),
        FARM_HEARTBEAT_S="0.5",
        **(extra_env or {}),
    )
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleet_worker.cli", "--drain-grace", str(grace_s)],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        async def online() -> bool:
            models = await farm.browser().get("/api/models")
            return bool(models.json()["workers_online"] == 1)

        if ollama_host is None:
            await wait_until(online, what="the worker process to come online")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def send(farm: Farm, browser: httpx.AsyncClient, text: str) -> dict[str, Any]:
    thread_id = await new_thread(browser)
    sent = await browser.post(f"/api/threads/{thread_id}/messages", json={"text": text})
    assert sent.status_code == 201, sent.text
    reply: dict[str, Any] = sent.json()["reply"]
    return reply


async def message(farm: Farm, browser: httpx.AsyncClient, reply: dict[str, Any]) -> dict[str, Any]:
    snapshot = (await browser.get(f"/api/threads/{reply['thread_id']}")).json()
    found: dict[str, Any] = next(
        m for m in snapshot["messages"] if m["message_id"] == reply["message_id"]
    )
    return found


async def until_state(
    farm: Farm,
    browser: httpx.AsyncClient,
    reply: dict[str, Any],
    *states: str,
    timeout_s: float = 20,
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def reached() -> bool:
        seen.update(await message(farm, browser, reply))
        return seen["state"] in states

    await wait_until(reached, timeout_s=timeout_s, what=f"the reply to be {states}")
    return seen


async def job_chunks(farm: Farm, job_id: str) -> int:
    info = await farm.coordinator.runner.call(reports.job, farm.coordinator.runner.db, job_id)
    assert info is not None
    return info.chunks


async def test_kill_9_mid_stream_is_noticed_within_the_grace_period(tmp_path: Path) -> None:
    sim = SimSettings(ttft_ms=10, tokens_per_s=40, reply_tokens=1000)
    async with farm_without_workers(tmp_path, sim) as (farm, broker):
        browser = farm.browser()
        async with worker_process(farm, broker, tmp_path) as proc:
            reply = await send(farm, browser, "long")

            async def streaming() -> bool:
                return await job_chunks(farm, reply["job_id"]) > 0

            await wait_until(streaming, what="the reply to stream")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            # Heartbeats stop; within the grace period (plus a sweep) the reply fails with
            # a reason, its text so far kept. (amqtt would never fire the Will here.)
            final = await until_state(farm, browser, reply, "failed", timeout_s=GRACE_S + 5)
            assert "stopped responding" in final["error"]
            assert final["content"]
            models = (await browser.get("/api/models")).json()
            assert models["workers_online"] == 0


async def test_sigterm_drains_then_exits_0_with_a_summary(tmp_path: Path) -> None:
    sim = SimSettings(ttft_ms=10, tokens_per_s=100, reply_tokens=30)
    async with farm_without_workers(tmp_path, sim) as (farm, broker):
        browser = farm.browser()
        async with worker_process(farm, broker, tmp_path, concurrency=2, grace_s=4) as proc:
            # One reply that finishes within the grace period, one that never starts.
            quick = await send(farm, browser, "[[sim:tokens=150]] [[sim:tps=100]] quick")
            stuck = await send(farm, farm.browser(), "[[sim:fault=hang]] stuck")

            async def both_held() -> bool:
                jobs = [
                    await farm.coordinator.runner.call(
                        reports.job, farm.coordinator.runner.db, r["job_id"]
                    )
                    for r in (quick, stuck)
                ]
                return all(j is not None and j.state == "running" for j in jobs)

            await wait_until(both_held, what="both jobs to run")
            proc.send_signal(signal.SIGTERM)
            returncode = await asyncio.to_thread(proc.wait, 30)
        log = (tmp_path / "worker.log").read_text()
        assert returncode == 0, log
        assert "Traceback" not in log
        assert "stopped: 1 succeeded, 0 failed, 1 handed back" in log
        assert (await until_state(farm, browser, quick, "done"))["state"] == "done"
        # The job it handed back (no token shown yet) waits in the queue for another worker.
        back = await until_state(farm, browser, stuck, "queued")
        assert back["content"] == ""


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "kill-9"])
async def test_a_broker_restart_mid_stream_loses_nothing(tmp_path: Path, kill: bool) -> None:
    sim = SimSettings(ttft_ms=10, tokens_per_s=50, reply_tokens=300)
    async with farm_without_workers(tmp_path, sim) as (farm, broker):
        assert broker.restart is not None
        browser = farm.browser()
        async with worker_process(farm, broker, tmp_path):
            reply = await send(farm, browser, "through a broker restart")

            async def streaming() -> bool:
                return await job_chunks(farm, reply["job_id"]) > 2

            await wait_until(streaming, what="the reply to stream")
            cookie = {"Cookie": f"farm_session={browser.cookies.get('farm_session')}"}
            async with websockets.connect(
                ws_url(farm, reply["thread_id"]), additional_headers=cookie
            ) as watcher:
                await broker.restart(kill=kill)
                # Everyone reconnects; the worker's chunks published meanwhile wait in its
                # outbox, the coordinator's persistent session gets what the broker
                # queued, and a gap is replayed. The stored text is verified against the
                # worker's checksum before the reply is "done".
                final = await until_state(farm, browser, reply, "done", "failed", timeout_s=40)
                log = (tmp_path / "worker.log").read_text()[-2000:]
                assert final["state"] == "done", (final, log)
                assert len(final["content"].split()) >= 280
                # The webapp missed what was published while it was away: it asked the
                # browser to start again from a fresh snapshot.
                with contextlib.suppress(websockets.ConnectionClosedError):
                    async for _ in watcher:  # until the webapp closes it
                        pass
                assert watcher.close_code == 4000


async def test_no_job_waits_for_a_worker_whose_ollama_is_down(tmp_path: Path) -> None:
    sim = SimSettings(ttft_ms=10, tokens_per_s=100, reply_tokens=20)
    async with farm_without_workers(tmp_path, sim) as (farm, broker):
        port = free_port()
        async with worker_process(
            farm,
            broker,
            tmp_path,
            ollama_host=f"http://127.0.0.1:{port}",
            extra_env={"FARM_INVENTORY_S": "1"},
        ):
            workers = farm.coordinator.registry
            worker_id = (await farm.coordinator.runner.call(workers.list_workers))[0].id

            async def state_is(state: str) -> bool:
                info = await farm.coordinator.runner.call(workers.get, worker_id)
                return info.state == state

            await wait_until(lambda: state_is("unavailable"), what="the worker to be unavailable")
            browser = farm.browser()
            # No online worker serves the model: refused at once, saying so (it would
            # only wait for its queue deadline).
            thread_id = await new_thread(browser)
            refused = await browser.post(
                f"/api/threads/{thread_id}/messages", json={"text": "is anyone there?"}
            )
            assert refused.status_code == 503
            assert refused.json()["error"] == "no worker serves llama3 right now"
            assert refused.json()["code"] == "no_worker"
            assert int(refused.headers["Retry-After"]) > 0
            # Ollama comes up: the worker says so and takes jobs again.
            stop_sim = asyncio.Event()
            ollama = sim.model_copy(update={"host": "127.0.0.1", "port": port})
            serving = asyncio.create_task(
                serve_app(create_sim_app(ollama), "127.0.0.1", port, stop_sim)
            )
            try:
                await wait_until(lambda: state_is("online"), what="the worker to be online")
                served = await send(farm, browser, "now Ollama is here")
                assert (await until_state(farm, browser, served, "done"))["state"] == "done"
            finally:
                stop_sim.set()
                await serving
            # Ollama goes away again: unavailable within an inventory period.
            await wait_until(lambda: state_is("unavailable"), what="unavailable again")
        log = (tmp_path / "worker.log").read_text()
        assert "worker unavailable" in log
        assert "Traceback" not in log


async def test_a_configured_model_not_pulled_yet_is_pulled_for_its_first_job(
    tmp_path: Path,
) -> None:
    sim = SimSettings(ttft_ms=10, tokens_per_s=100, reply_tokens=20)
    async with farm_without_workers(tmp_path, sim) as (farm, broker):
        async with worker_process(
            farm, broker, tmp_path, extra_env={"FARM_MODELS": '["llama3", "phi3"]'}
        ):
            browser = farm.browser()
            models = (await browser.get("/api/models")).json()["models"]
            assert "phi3" in models  # offered: the worker will pull it on demand
            thread_id = await new_thread(browser)
            sent = await browser.post(
                f"/api/threads/{thread_id}/messages", json={"text": "hi", "model": "phi3"}
            )
            reply = sent.json()["reply"]
            assert (await until_state(farm, browser, reply, "done"))["state"] == "done"
            # Not offered any more: a model this worker does not serve is never accepted.
            refused = await browser.post(
                f"/api/threads/{await new_thread(browser)}/messages",
                json={"text": "hi", "model": "gemma2"},
            )
            assert refused.status_code == 404
        log = (tmp_path / "worker.log").read_text()
        assert "pulling phi3" in log
        assert "pull phi3: pulling" in log  # progress, as Ollama reports it


@asynccontextmanager
async def faulty_farm(tmp_path: Path, **settings: Any) -> AsyncIterator[Farm]:
    """A farm on Mosquitto with one in-process worker, for the simulator's faults."""
    sim = SimSettings(ttft_ms=10, tokens_per_s=100, reply_tokens=40)
    async with (
        broker_of("mosquitto") as broker,
        running_farm(
            tmp_path,
            broker,
            sim=sim,
            coordinator_settings={"worker_grace_s": GRACE_S, **settings},
        ) as farm,
    ):
        yield farm


async def still_serving(farm: Farm, browser: httpx.AsyncClient, timeout_s: float = 20) -> None:
    """The worker takes and finishes the next request."""
    ok = await send(farm, farm.browser(), "[[sim:tokens=5]] next")
    assert (await until_state(farm, browser, ok, "done", timeout_s=timeout_s))["state"] == "done"


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("http_error", "the model failed"),
        ("error_mid_stream", "mid-stream"),
        ("hang", "no reply started within 3 s"),
    ],
)
async def test_each_simulator_fault_fails_the_reply_with_a_reason_and_the_worker_goes_on(
    tmp_path: Path, fault: str, reason: str
) -> None:
    async with faulty_farm(tmp_path, first_token_timeout_s=3, max_attempts=1) as farm:
        browser = farm.browser()
        reply = await send(farm, browser, f"[[sim:fault={fault}]] please")
        final = await until_state(farm, browser, reply, "failed", "timed_out", timeout_s=20)
        assert final["error"], final
        assert reason in final["error"]
        await still_serving(farm, browser)


async def test_a_request_that_fails_at_every_attempt_does_not_quarantine_the_only_worker(
    tmp_path: Path,
) -> None:
    """A prompt the worker's Ollama cannot run (a 500 each time) fails its three attempts
    on the farm's only worker. That is one failed job for the worker, not three in a row:
    it is not quarantined for a minute, and the next request is served at once."""
    async with faulty_farm(tmp_path, max_attempts=3, quarantine_after=3) as farm:
        browser = farm.browser()
        reply = await send(farm, browser, "[[sim:fault=http_error]] poison")
        final = await until_state(farm, browser, reply, "failed", timeout_s=20)
        assert "the model failed" in (final["error"] or "")
        coordinator = farm.coordinator
        job = await coordinator.runner.call(reports.job, coordinator.runner.db, final["job_id"])
        assert job is not None
        assert job.attempt == 3
        await still_serving(farm, browser, timeout_s=10)  # not quarantined for a minute
