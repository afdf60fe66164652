"""Several coordinators on one database (PostgreSQL, to scale out) store every reply
exactly as the worker generated it.

Every coordinator receives every job's chunks, and each writes the text it has received
on its own schedule. Before, each appended "the text since my last write" wherever the
stored text had got to, so the two coordinators' overlapping batches doubled pieces of
every reply (a 2,057-character reply was stored, and answered, as 3,833 characters, and
marked succeeded). Now a write continues exactly where the stored text ends, from the
chunks the coordinator holds. And when one of them is killed mid-stream, the other
stores every reply whole."""

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from coordinator.keys.api_keys import ApiKeyStore
from llama_farm.ollama_sim.settings import SimSettings
from tests.support.brokers import broker_of
from tests.support.farm import running_farm

REPLIES = 8


def _prompt(i: int) -> str:
    """Words that are all different, so that a doubled piece shows."""
    return " ".join(f"w{i}.{n}" for n in range(250))


@pytest.mark.parametrize("kill", [False, True], ids=["both-running", "one-killed"])
async def test_two_coordinators_store_each_reply_exactly(
    tmp_path: Path, db_url: str, kill: bool
) -> None:
    # 250 words at 300 tokens/s: about 20 chunks a reply, written in several batches
    sim = SimSettings(reply="echo", ttft_ms=0, tokens_per_s=300)
    async with (
        broker_of("mosquitto") as broker,
        running_farm(
            tmp_path,
            broker,
            sim=sim,
            workers=2,
            concurrency=4,
            coordinators=2,
            # a job the killed one claimed but never sent is taken back after 2 s
            coordinator_settings={"database_url": db_url, "accept_timeout_s": 2},
        ) as farm,
    ):
        store = ApiKeyStore(farm.coordinator.runner.db)
        _, key = await farm.coordinator.runner.call(store.create, "bot", REPLIES)
        async with httpx.AsyncClient(
            base_url=farm.web_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client:

            async def ask(i: int) -> str:
                body = {"model": "llama3", "messages": [{"role": "user", "content": _prompt(i)}]}
                response = await client.post("/v1/chat/completions", json=body)
                assert response.status_code == 200, response.text
                return str(response.json()["choices"][0]["message"]["content"])

            asking = asyncio.gather(*(ask(i) for i in range(REPLIES)))
            if kill:
                await asyncio.sleep(0.4)  # the replies are streaming
                farm.more_coordinators[0].send_signal(signal.SIGKILL)
            answers = await asking

        assert answers == [_prompt(i) for i in range(REPLIES)]

        def stored() -> list[tuple[str, str, str]]:
            rows = farm.coordinator.runner.db.execute_sql(  # type: ignore[no-untyped-call]
                "SELECT m.content, m.state, j.state FROM message m"
                " JOIN job j ON j.message_id = m.id WHERE m.role = 'assistant'"
            ).fetchall()
            return sorted((str(c), str(m), str(j)) for c, m, j in rows)

        rows = await farm.coordinator.runner.call(stored)
        expected = sorted((_prompt(i), "done", "succeeded") for i in range(REPLIES))
        assert rows == expected
