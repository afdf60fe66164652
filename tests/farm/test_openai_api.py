"""The OpenAI-compatible API with the official `openai` client, on Mosquitto and on amqtt:
models, a whole reply, a streamed reply, and errors in OpenAI's shape (401, 404, 429)."""

import asyncio
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from coordinator.db.tables import Job
from coordinator.keys.api_keys import ApiKeyStore
from llama_farm.ollama_sim.settings import SimSettings
from tests.support.brokers import RunningBroker
from tests.support.farm import Farm, running_farm, wait_until


async def _jobs_of(farm: Farm, key_id: str, state: str, count: int) -> bool:
    def counted() -> int:
        where = (Job.api_key_id == key_id) & (Job.state == state)
        return int(Job.select().where(where).count(farm.coordinator.runner.db))

    return await farm.coordinator.runner.call(counted) == count


async def test_the_official_client_works_against_the_farm(
    tmp_path: Path, broker: RunningBroker
) -> None:
    sim = SimSettings(reply="echo", ttft_ms=10, tokens_per_s=200)
    backlog = {"api_key_backlog_per_slot": 1}
    async with running_farm(
        tmp_path, broker, sim=sim, workers=2, coordinator_settings=backlog
    ) as farm:
        store = ApiKeyStore(farm.coordinator.runner.db)
        info, key = await farm.coordinator.runner.call(store.create, "ci bot", 2)
        key_id = info.id
        client = openai.AsyncOpenAI(api_key=key, base_url=farm.web_url + "/v1", max_retries=0)
        try:
            ids = [m.id async for m in client.models.list()]
            assert "llama3" in ids
            async with httpx.AsyncClient() as fresh:  # no cookie jar carried over
                listed = await fresh.get(
                    farm.web_url + "/v1/models", headers={"Authorization": f"Bearer {key}"}
                )
            assert listed.status_code == 200
            assert "set-cookie" not in listed.headers  # a key, not a browser session

            whole = await client.chat.completions.create(
                model="llama3",
                messages=[
                    {"role": "system", "content": "You echo."},
                    {"role": "user", "content": "first question"},
                    {"role": "assistant", "content": "first answer"},
                    {"role": "user", "content": "hello farm, answer in full"},
                ],
            )
            assert whole.choices[0].message.content == "hello farm, answer in full"
            assert whole.choices[0].finish_reason == "stop"

            stream = await client.chat.completions.create(
                model="llama3",
                messages=[{"role": "user", "content": "stream me" + " please" * 30}],
                stream=True,
            )
            parts = [c.choices[0].delta.content or "" async for c in stream]
            assert "".join(parts) == "stream me" + " please" * 30
            assert len([p for p in parts if p]) > 2, "the reply should arrive in pieces"

            with pytest.raises(openai.NotFoundError, match="does not exist"):
                await client.chat.completions.create(
                    model="gpt-99", messages=[{"role": "user", "content": "hi"}]
                )
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(
                    model="llama3", messages=[{"role": "assistant", "content": "no question"}]
                )

            # The key allows 2 replies at once and 2 more waiting (a backlog of 1 per
            # slot): those wait their turn, and one more is refused.
            long: list[ChatCompletionMessageParam] = [{"role": "user", "content": "word " * 400}]
            running = [
                await client.chat.completions.create(model="llama3", messages=long, stream=True)
                for _ in range(2)
            ]
            short: list[ChatCompletionMessageParam] = [{"role": "user", "content": "my turn"}]
            waiting = [
                asyncio.create_task(client.chat.completions.create(model="llama3", messages=short))
                for _ in range(2)
            ]
            await wait_until(
                lambda: _jobs_of(farm, key_id, "queued", 2), what="two requests waiting"
            )
            with pytest.raises(openai.RateLimitError, match="limit") as limited:
                await client.chat.completions.create(model="llama3", messages=long)
            assert limited.value.response.headers.get("retry-after")
            for busy in running:
                await busy.close()  # hung up: their jobs are cancelled, the others start
            for answer in await asyncio.gather(*waiting):
                assert answer.choices[0].message.content == "my turn"
        finally:
            await client.close()

        stranger = openai.AsyncOpenAI(
            api_key="lfa_0000_wrong", base_url=farm.web_url + "/v1", max_retries=0
        )
        with pytest.raises(openai.AuthenticationError, match="invalid API key"):
            await stranger.chat.completions.create(
                model="llama3", messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.AuthenticationError):
            await stranger.models.list()
        await stranger.close()
