"""A burst is served or refused at once, by design: 300 requests arrive together at a
farm of one worker with 2 slots. Each is either served, or refused with a 503 and a
Retry-After before any job was made for it (the model's queue holds only what the fleet
can start before the queue deadline, coordinator.jobs.capacity). None is accepted and then
fails after waiting. A refused client that comes back when the load has gone is served.

Before, the queue took all 300 and the 138 the worker could not start within the 120 s
queue deadline got a 502 after waiting for it."""

import asyncio
from pathlib import Path

import httpx

from coordinator.db.tables import Job
from coordinator.jobs.capacity import RETRY_MAX_S
from coordinator.keys.api_keys import ApiKeyStore
from llama_farm.ollama_sim.settings import SimSettings
from tests.support.brokers import mosquitto
from tests.support.farm import running_farm, wait_until

BURST = 300


async def test_a_burst_is_served_or_refused_at_once(tmp_path: Path) -> None:
    sim = SimSettings(ttft_ms=10, tokens_per_s=400, reply_tokens=40)
    async with mosquitto() as broker, running_farm(tmp_path, broker, sim=sim) as farm:
        coordinator = farm.coordinator
        store = ApiKeyStore(coordinator.runner.db)
        _, key = await coordinator.runner.call(store.create, "burst", 1000)
        await wait_until(
            lambda: coordinator.capacity.limit("llama3") is not None,
            what="the dispatcher to see the fleet",
        )
        limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
        async with httpx.AsyncClient(
            base_url=farm.web_url,
            headers={"Authorization": f"Bearer {key}"},
            limits=limits,
            timeout=180,
        ) as client:

            async def ask(n: int) -> httpx.Response:
                body = {"model": "llama3", "messages": [{"role": "user", "content": f"q{n}"}]}
                return await client.post("/v1/chat/completions", json=body)

            answers = await asyncio.gather(*(ask(n) for n in range(BURST)))
            served = [a for a in answers if a.status_code == 200]
            refused = [a for a in answers if a.status_code == 503]
            assert len(served) + len(refused) == BURST, {a.status_code for a in answers}
            assert served, "the fleet serves what it can start in time"
            assert refused, "a burst of 300 on 2 slots is more than the queue may take"
            for answer in served:
                assert answer.json()["choices"][0]["message"]["content"]
            for answer in refused:
                error = answer.json()["error"]
                assert error["code"] == "server_busy"
                assert error["message"].startswith("the farm is busy: try again in about")
                assert 1 <= int(answer.headers["Retry-After"]) <= RETRY_MAX_S
            # refused before a job was made for them: every job made was served
            jobs = await coordinator.runner.call(lambda: list(Job.select(Job.state)))
            assert [j.state for j in jobs] == ["succeeded"] * len(served)

            # a refused client comes back when the load has gone, and is served
            again = await ask(0)
            assert again.status_code == 200
