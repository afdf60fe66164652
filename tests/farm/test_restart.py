"""Restart safety: the coordinator is a real process, killed with SIGKILL while a reply
streams and two more wait in the queue, then started again on the same database and
broker. Nothing is lost: the streaming reply continues to a verified final text (what
the killed process had received but not written, and what was published while no
coordinator ran, the worker replays when the new one asks), the queued ones are served,
and the worker is still registered."""

import asyncio
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from farm_protocol.chat import SESSION_HEADER
from farm_runtime.broker import BrokerSettings
from farm_runtime.http_serving import serve_app
from farm_runtime.lifecycle import run_services
from fleet_worker.service import FleetWorker
from fleet_worker.settings import WorkerSettings
from llama_farm.ollama_sim.app import create_sim_app
from llama_farm.ollama_sim.settings import SimSettings
from llama_farm.ports import free_port
from tests.support.brokers import RunningBroker, broker_of
from tests.support.farm import wait_until
from tests.support.processes import broker_env, start_service

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def coordinator_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_service(["coordinator"], env, ROOT, log)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)


async def test_a_coordinator_killed_mid_stream_loses_nothing(tmp_path: Path) -> None:
    async with broker_of("mosquitto") as broker:
        await _scenario(tmp_path, broker)


async def _scenario(tmp_path: Path, broker: RunningBroker) -> None:
    token, admin_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    port = free_port()
    mqtt = broker.settings()
    env = {
        **os.environ,
        **broker_env(mqtt),
        "FARM_DATABASE_URL": f"sqlite:///{tmp_path / 'farm.sqlite3'}",
        "FARM_HTTP_PORT": str(port),
        "FARM_SERVICE_TOKEN": token,
        "FARM_ADMIN_TOKEN": admin_token,
        "FARM_COORDINATOR_CLIENT_ID": "farm-coordinator-restart-test",
        # Text is written every 3 s, so the killed process surely dies holding checkpoints
        # it received (and the broker counts as delivered) but never wrote; a reply
        # missing them would stall and time out after 20 s instead of ending "done".
        "FARM_FLUSH_INTERVAL_S": "3",
        "FARM_STALL_TIMEOUT_S": "20",
    }
    log = tmp_path / "coordinator.log"
    base = f"http://127.0.0.1:{port}/api/v1"
    admin = httpx.AsyncClient(
        base_url=f"{base}/admin", headers={"Authorization": f"Bearer {admin_token}"}, timeout=10
    )

    clients = [admin]

    def chat(user: str) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}", SESSION_HEADER: user * 20}
        client = httpx.AsyncClient(base_url=f"{base}/chat", headers=headers, timeout=10)
        clients.append(client)
        return client

    async def up() -> bool:
        try:
            return (await admin.get("/stats")).status_code == 200
        except httpx.HTTPError:
            return False

    stop = asyncio.Event()
    with coordinator_process(env, log) as first:
        await wait_until(up, what="the coordinator to serve")
        added = (await admin.post("/workers", json={"name": "box"})).json()
        worker_id, key = added["worker"]["id"], added["api_key"]
        await broker.add_client(worker_id, key)
        sim = SimSettings(
            host="127.0.0.1", port=free_port(), ttft_ms=10, tokens_per_s=100, reply_tokens=1500
        )
        worker = FleetWorker(
            WorkerSettings(
                broker=BrokerSettings(url=mqtt.url),
                worker_id=worker_id,
                api_key=SecretStr(key),
                ollama_host=f"http://127.0.0.1:{sim.port}",
                concurrency=1,
                heartbeat_s=0.5,
            ),
            drain_grace_s=1.0,
        )
        services = run_services(
            {
                "simulator": serve_app(create_sim_app(sim), sim.host, sim.port, stop),
                "worker": worker.run(stop),
            },
            stop,
        )
        task = asyncio.create_task(services)
        try:

            async def online() -> bool:
                return bool((await admin.get(f"/workers/{worker_id}")).json()["online"])

            await wait_until(online, what="the worker to come online")
            replies: list[tuple[httpx.AsyncClient, str, dict[str, Any]]] = []
            for user, text in (
                ("a", "a long one"),
                ("b", "[[sim:tokens=20]] b"),
                ("c", "[[sim:tokens=20]] c"),
            ):
                client = chat(user)
                thread = (await client.post("/threads", json={})).json()["thread_id"]
                sent = await client.post(f"/threads/{thread}/messages", json={"text": text})
                assert sent.status_code == 201, sent.text
                replies.append((client, thread, sent.json()["reply"]))
            streaming = replies[0][2]["job_id"]

            async def mid_stream() -> bool:
                job = (await admin.get(f"/jobs/{streaming}")).json()
                return bool(job["state"] == "running" and job["chunks"] >= 3)

            await wait_until(mid_stream, what="the first reply to be streaming")
            await asyncio.sleep(1.0)  # chunks arrive that the next flush would write
            first.send_signal(signal.SIGKILL)
            assert first.wait(timeout=10) == -signal.SIGKILL
            await asyncio.sleep(1.0)  # the worker goes on publishing into the broker

            with coordinator_process(env, log):
                await wait_until(up, what="the coordinator to serve again")
                queued = (await admin.get("/jobs", params={"state": "queued"})).json()
                assert {j["job_id"] for j in queued} == {r[2]["job_id"] for r in replies[1:]}

                async def all_final() -> bool:
                    for client, thread, reply in replies:
                        snapshot = (await client.get(f"/threads/{thread}")).json()
                        mine = next(
                            m
                            for m in snapshot["messages"]
                            if m["message_id"] == reply["message_id"]
                        )
                        if mine["state"] in ("queued", "generating"):
                            return False
                    return True

                await wait_until(all_final, timeout_s=60, what="every reply to end")
                for client, thread, reply in replies:
                    snapshot = (await client.get(f"/threads/{thread}")).json()
                    mine = next(
                        m for m in snapshot["messages"] if m["message_id"] == reply["message_id"]
                    )
                    # "done" means the stored text matched the worker's chunk count, length
                    # and SHA-256 of the whole reply.
                    assert mine["state"] == "done", (mine, log.read_text()[-3000:])
                    assert mine["content"]
                long = (await replies[0][0].get(f"/threads/{replies[0][1]}")).json()["messages"][-1]
                assert len(long["content"].split()) >= 500
                job = (await admin.get(f"/jobs/{streaming}")).json()
                assert (job["state"], job["attempt"]) == ("succeeded", 1)
                assert (await admin.get(f"/workers/{worker_id}")).json()["online"] is True
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=15)
            for client in clients:
                await client.aclose()
