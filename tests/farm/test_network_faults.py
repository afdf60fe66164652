"""The network between one worker process and Mosquitto cut and restored, through a TCP
proxy the test controls. A short cut loses nothing: the reply ends ``done``, its text
verified by checksum. A cut longer than the grace period fails the streaming reply with a
reason and its text kept (the worker's late events are fenced off), and once the network
is back the worker serves the next reply."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from llama_farm.ollama_sim.settings import SimSettings
from tests.farm.test_worker_faults import (
    GRACE_S,
    farm_without_workers,
    job_chunks,
    send,
    until_state,
    worker_process,
)
from tests.support.farm import Farm, new_thread, wait_until
from tests.support.tcp_proxy import TcpProxy, tcp_proxy

KEEPALIVE = {"FARM_BROKER__KEEPALIVE": "2"}  # a dead link is noticed in about 3 s


@asynccontextmanager
async def streaming_through_a_proxy(
    tmp_path: Path, sim: SimSettings, text: str
) -> AsyncIterator[tuple[Farm, TcpProxy, httpx.AsyncClient, dict[str, Any]]]:
    """A worker process whose broker connection goes through a proxy the test controls,
    streaming the reply to ``text``."""
    async with (
        farm_without_workers(tmp_path, sim) as (farm, broker),
        tcp_proxy(broker.port) as proxy,
    ):
        browser = farm.browser()
        url = f"mqtt://127.0.0.1:{proxy.port}"
        async with worker_process(farm, broker, tmp_path, broker_url=url, extra_env=KEEPALIVE):
            reply = await send(farm, browser, text)

            async def streaming() -> bool:
                return await job_chunks(farm, reply["job_id"]) > 2

            await wait_until(streaming, what="the reply to stream")
            yield farm, proxy, browser, reply


async def test_a_short_network_cut_loses_nothing(tmp_path: Path) -> None:
    sim = SimSettings(ttft_ms=10, tokens_per_s=50, reply_tokens=200)
    async with streaming_through_a_proxy(tmp_path, sim, "through a short cut") as (
        farm,
        proxy,
        browser,
        reply,
    ):
        proxy.cut()
        await asyncio.sleep(1.0)  # shorter than the keepalive's patience and the grace
        proxy.restore()
        final = await until_state(farm, browser, reply, "done", "failed", timeout_s=30)
        assert final["state"] == "done", final
        assert len(final["content"].split()) == 200
        assert proxy.connections == 1  # the same connection carried on


async def test_a_long_network_cut_fails_the_reply_then_the_worker_comes_back(
    tmp_path: Path,
) -> None:
    sim = SimSettings(ttft_ms=10, tokens_per_s=30, reply_tokens=30)
    # 60 s of text: the worker is still generating it when it comes back
    text = "[[sim:tokens=1800]] through a long cut"
    async with streaming_through_a_proxy(tmp_path, sim, text) as (farm, proxy, browser, reply):
        proxy.cut()
        # The coordinator hears nothing from the worker: after the grace period the
        # streaming reply fails, keeping the text it had.
        failed = await until_state(farm, browser, reply, "failed", "done", timeout_s=GRACE_S + 10)
        assert failed["state"] == "failed", failed
        assert "stopped responding" in (failed["error"] or "")
        kept = failed["content"]
        assert kept
        # A new message is refused at once, saying why: the only worker is cut off (it
        # would only wait for its queue deadline).
        thread_id = await new_thread(browser)
        path = f"/api/threads/{thread_id}/messages"
        refused = await browser.post(path, json={"text": "during the cut"})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "no worker serves llama3 right now"
        # the cut lasts until the worker has noticed its dead link and dials again
        await wait_until(
            lambda: proxy.connections >= 2, timeout_s=30, what="the worker to dial again"
        )

        proxy.restore()

        # The worker notices its dead connection, reconnects with a new session and
        # serves again; the first reply stays failed with its text.
        async def back() -> bool:
            return bool((await browser.get("/api/models")).json()["workers_online"])

        await wait_until(back, timeout_s=30, what="the worker to come back")
        # The bytes the proxy held arrive first: the dead connection's last heartbeats
        # make the worker look back a moment before its Will marks that session offline
        # and its new one says online. Meanwhile "no worker serves llama3" is the right
        # answer; the farm serves again once the new session is in.
        answers: list[httpx.Response] = []

        async def served() -> bool:
            answers.append(await browser.post(path, json={"text": "after the cut"}))
            if answers[-1].status_code == 503:
                assert answers[-1].json()["code"] == "no_worker", answers[-1].text
                return False
            return True

        await wait_until(served, timeout_s=30, what="the farm to take a request again")
        sent = answers[-1]
        assert sent.status_code == 201, sent.text
        waiting = sent.json()["reply"]
        done = await until_state(farm, browser, waiting, "done", "failed", timeout_s=30)
        assert done["state"] == "done", done
        after = await until_state(farm, browser, reply, "failed")
        assert after["content"] == kept  # late chunks of the failed attempt are fenced
        assert proxy.connections >= 2
        # The worker still ran the failed reply when it came back: told by the
        # coordinator (from its heartbeat) that the job is no longer its own, it
        # closed that Ollama stream instead of finishing it.
        streams = (await browser.get(farm.sim_url + "/sim/streams")).json()
        assert streams["aborted"] == 1, streams
