"""The vertical slice end to end, on Mosquitto and on amqtt: a message sent through the
webapp is stored, queued, claimed, streamed by a worker through the broker to the
browser's websocket as it is generated, and its final text stored by the coordinator."""

import asyncio
from pathlib import Path

from llama_farm.ollama_sim.settings import SimSettings
from tests.support.brokers import RunningBroker
from tests.support.farm import new_thread, running_farm, send_and_stream


async def test_message_streams_to_the_browser_and_is_stored(
    tmp_path: Path, broker: RunningBroker
) -> None:
    sim = SimSettings(ttft_ms=10, tokens_per_s=100, reply_tokens=30)
    async with running_farm(tmp_path, broker, sim=sim) as farm:
        browser = farm.browser()
        thread_id = await new_thread(browser)
        streamed = await send_and_stream(farm, browser, thread_id, "hello llamas")

        assert streamed.final["state"] == "done"
        assert len(streamed.chunks) > 1, "the reply should arrive in several chunks"
        assert "".join(streamed.chunks) == streamed.final["content"]
        snapshot = (await browser.get(f"/api/threads/{thread_id}")).json()
        stored = next(m for m in snapshot["messages"] if m["message_id"] == streamed.reply_id)
        assert stored["content"] == streamed.final["content"]
        assert stored["content_seq"] == len(streamed.chunks) - 1


async def test_the_first_token_is_sent_at_once(tmp_path: Path, broker: RunningBroker) -> None:
    """What a user waits for is the first sign of life: the worker sends the first token
    alone, without the 50 ms its later chunks may wait for company."""
    sim = SimSettings(ttft_ms=10, tokens_per_s=2000, reply_tokens=200)
    async with running_farm(tmp_path, broker, sim=sim) as farm:
        browser = farm.browser()
        thread_id = await new_thread(browser)
        streamed = await send_and_stream(farm, browser, thread_id, "quick")
        assert streamed.final["state"] == "done"
        first_word = streamed.final["content"].split()[0]
        assert streamed.chunks[0].split() == [first_word]  # the simulator's first token
        assert len(streamed.chunks[1].split()) > 1  # later ones coalesce


async def test_concurrent_streams_never_cross(tmp_path: Path, broker: RunningBroker) -> None:
    """In echo mode each reply repeats its own prompt: any crossed chunk would show."""
    sim = SimSettings(reply="echo", ttft_ms=10, tokens_per_s=150)
    async with running_farm(tmp_path, broker, sim=sim, workers=2, concurrency=2) as farm:
        prompts = [f"prompt {i}: " + " ".join(f"w{i}x{j}" for j in range(25)) for i in range(4)]

        async def one(prompt: str) -> None:
            browser = farm.browser()
            thread_id = await new_thread(browser)
            streamed = await send_and_stream(farm, browser, thread_id, prompt)
            assert streamed.final["state"] == "done"
            assert "".join(streamed.chunks) == prompt
            assert streamed.final["content"] == prompt

        await asyncio.gather(*(one(p) for p in prompts))
