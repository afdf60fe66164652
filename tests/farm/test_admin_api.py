"""The coordinator's admin API over real HTTP, with a real broker and worker: tokens,
workers and keys, drain, API keys, jobs (list, inspect, cancel), statistics and the
Prometheus metrics. Bad input gets a 4xx with a clear message, never a 500."""

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from coordinator.db.tables import Worker
from coordinator.keys.hashing import verify_key
from farm_protocol.joining import JoinLine
from llama_farm.ollama_sim.settings import SimSettings
from tests.support.brokers import RunningBroker
from tests.support.farm import new_thread, running_farm, send_and_stream, wait_until

TOKEN = "admin-" + "x" * 30


async def test_admin_api(
    tmp_path: Path, broker: RunningBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = SimSettings(ttft_ms=10, tokens_per_s=40, reply_tokens=1000)
    settings = {
        "admin_token": TOKEN,
        "public_url": "https://chat.example.org",
        "public_broker_url": "mqtts://farm.example.org:8883",
    }
    async with running_farm(
        tmp_path, broker, sim=sim, concurrency=1, coordinator_settings=settings
    ) as farm:
        admin = farm.admin(TOKEN)
        # Tokens.
        for wrong in (farm.admin("wrong"), httpx.AsyncClient(base_url=str(admin.base_url))):
            response = await wrong.get("/workers")
            assert response.status_code == 401
            assert "admin token" in response.json()["error"]
            await wrong.aclose()

        # Workers: add (key shown once, stored hashed), list, get, rotate, revoke.
        added = await admin.post("/workers", json={"name": "Ada's laptop"})
        assert added.status_code == 201, added.text
        line = JoinLine.decode(added.json()["join"])  # the line for the laptop's owner
        assert (line.farm, line.broker) == (settings["public_url"], settings["public_broker_url"])
        again = await admin.post(f"/workers/{added.json()['worker']['id']}/enrol")
        assert again.status_code == 201, again.text
        assert JoinLine.decode(again.json()["join"]).token != line.token
        new = added.json()
        assert new["worker"]["id"] == "ada-s-laptop"
        assert new["api_key"].startswith("lf_")
        # On Mosquitto the coordinator made its broker account; amqtt is not managed yet.
        managed = broker.kind == "mosquitto"
        assert new["broker"] == ("provisioned" if managed else "not managed")
        stored = await farm.coordinator.runner.call(Worker.get_by_id, "ada-s-laptop")
        assert new["api_key"] not in stored.key_hash
        assert verify_key(new["api_key"], stored.key_hash)
        assert (
            await admin.post("/workers", json={"name": "x", "worker_id": "ada-s-laptop"})
        ).status_code == 409
        assert (await admin.post("/workers", json={"name": ""})).status_code == 400
        # Service account names are reserved: a worker can never take their rights.
        reserved = await admin.post("/workers", json={"name": "x", "worker_id": "farm-webapp"})
        assert reserved.status_code == 400
        assert "reserved" in reserved.json()["error"]
        renamed = await admin.post("/workers", json={"name": "Farm Coordinator"})
        assert renamed.json()["worker"]["id"] == "w-farm-coordinator"
        # Added at the same time under one name: each gets an id of its own.
        same = await asyncio.gather(
            *(admin.post("/workers", json={"name": "GPU box"}) for _ in range(4))
        )
        assert [r.status_code for r in same] == [201] * 4
        ids = {r.json()["worker"]["id"] for r in same}
        assert ids == {"gpu-box", "gpu-box-2", "gpu-box-3", "gpu-box-4"}
        assert (await admin.post("/workers", content=b"[1,2")).status_code == 400
        listed = (await admin.get("/workers")).json()
        live = next(w for w in listed if w["id"] == "test-worker-0")
        assert live["online"] is True
        assert live["models"]
        assert live["capacity"] == 1
        rotated = await admin.post("/workers/ada-s-laptop/rotate")
        assert rotated.json()["api_key"] != new["api_key"]
        revoked = await admin.post("/workers/ada-s-laptop/revoke")
        assert revoked.json()["revoked_at"] is not None
        assert (await admin.post("/workers/ada-s-laptop/revoke")).status_code == 404
        assert (await admin.get("/workers/nobody")).status_code == 404
        assert (await admin.get("/workers/..%2F..")).status_code == 404

        # Jobs: a long reply runs; another waits; inspect, list, cancel both.
        browser = farm.browser()
        thread_id = await new_thread(browser)
        first = (
            await browser.post(f"/api/threads/{thread_id}/messages", json={"text": "long"})
        ).json()["reply"]
        other = farm.browser()
        other_thread = await new_thread(other)
        second = (
            await other.post(f"/api/threads/{other_thread}/messages", json={"text": "wait"})
        ).json()["reply"]

        async def running() -> bool:
            job = (await admin.get(f"/jobs/{first['job_id']}")).json()
            return bool(job["state"] == "running" and job["chunks"] > 0)

        await wait_until(running, what="the first job to stream")
        queued = (await admin.get("/jobs", params={"state": "queued"})).json()
        assert [(j["job_id"], j["queue_position"]) for j in queued] == [(second["job_id"], 1)]
        stats = (await admin.get("/stats")).json()
        assert (stats["queued"], stats["running"], stats["workers_online"]) == (1, 1, 1)
        assert stats["by_model"]["llama3:latest"]["queued"] == 1
        assert stats["slots_free"] == 0
        assert (await admin.get("/jobs", params={"state": "bogus"})).status_code == 400
        assert (await admin.get("/jobs", params={"limit": "many"})).status_code == 400

        cancelled = await admin.post(f"/jobs/{first['job_id']}/cancel", json={"reason": "ops"})
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "cancelled"
        assert (await admin.post(f"/jobs/{first['job_id']}/cancel")).status_code == 409
        assert (await admin.post("/jobs/nope/cancel")).status_code == 404

        # The freed slot goes to the waiting job.
        async def second_runs() -> bool:
            job = (await admin.get(f"/jobs/{second['job_id']}")).json()
            return bool(job["state"] == "running" and job["chunks"] > 0)

        await wait_until(second_runs, what="the waiting job to get the freed slot")
        await admin.post(f"/jobs/{second['job_id']}/cancel")

        # API keys.
        key = await admin.post("/api-keys", json={"name": "batch", "max_concurrent": 2})
        assert key.status_code == 201, key.text
        assert key.json()["key"].startswith("lfa_")
        key_id = key.json()["api_key"]["id"]
        assert [k["id"] for k in (await admin.get("/api-keys")).json()] == [key_id]
        assert (
            await admin.post("/api-keys", json={"name": "x", "max_concurrent": 0})
        ).status_code == 400
        usage = (await admin.get(f"/api-keys/{key_id}/usage", params={"days": 7})).json()
        assert (usage["days"], usage["usage"], usage["api_key"]["id"]) == (7, [], key_id)
        assert (await admin.get(f"/api-keys/{key_id}/usage?days=0")).status_code == 400
        assert (await admin.get("/api-keys/nope/usage")).status_code == 404
        assert (await admin.post(f"/api-keys/{key_id}/revoke")).json()["revoked_at"] is not None

        # Metrics (Prometheus text), after one completed reply.
        done = await send_and_stream(farm, browser, thread_id, "[[sim:tokens=3]] short")
        assert done.final["state"] == "done"
        async with httpx.AsyncClient(base_url=farm.coordinator_url) as plain:
            text = (await plain.get("/metrics")).text
        assert 'farm_jobs_finished_total{state="cancelled"} 2.0' in text
        assert 'farm_jobs_finished_total{state="succeeded"} 1.0' in text
        assert "farm_workers_online 1.0" in text
        assert "farm_queue_wait_seconds_count 3.0" in text
        assert "farm_time_to_first_token_seconds_count 3.0" in text

        # Drain: the worker says it is draining and takes no new jobs.
        drained = await admin.post("/workers/test-worker-0/drain", json={"reason": "upgrade"})
        assert drained.status_code == 202, drained.text

        async def draining() -> bool:
            info = (await admin.get("/workers/test-worker-0")).json()
            return bool(info["state"] == "draining")

        await wait_until(draining, what="the worker to report draining")

        # Keys are shown once, in the response, and never logged by any service.
        assert new["api_key"] not in caplog.text
        assert rotated.json()["api_key"] not in caplog.text
