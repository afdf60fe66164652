"""The OpenAI-compatible API with the official `openai` client, on Mosquitto and on amqtt:
models, a whole reply, a streamed reply, and errors in OpenAI's shape (401, 404, 429)."""

import asyncio
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from coordinator.keys.api_keys import ApiKeyStore
from llama_farm.ollama_sim.settings import SimSettings
from tests.support.brokers import RunningBroker
from tests.support.farm import running_farm


async def test_the_official_client_works_against_the_farm(
    tmp_path: Path, broker: RunningBroker
) -> None:
    sim = SimSettings(reply="echo", ttft_ms=10, tokens_per_s=200)
    async with running_farm(tmp_path, broker, sim=sim, workers=2) as farm:
        store = ApiKeyStore(farm.coordinator.runner.db)
        _, key = await farm.coordinator.runner.call(store.create, "ci bot", 2)
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

            # The key allows 2 replies at once: a third at the same time is refused.
            long: list[ChatCompletionMessageParam] = [{"role": "user", "content": "word " * 400}]
            running = [
                await client.chat.completions.create(model="llama3", messages=long, stream=True)
                for _ in range(2)
            ]
            with pytest.raises(openai.RateLimitError, match="limit") as limited:
                await client.chat.completions.create(model="llama3", messages=long)
            assert limited.value.response.headers.get("retry-after")
            for busy in running:
                await busy.close()
            await asyncio.sleep(0)
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
