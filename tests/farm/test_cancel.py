"""Stopping a reply: through the webapp, on Mosquitto and on amqtt. The job ends
cancelled with its text so far kept, the worker stops generating (its only slot is free
for the next reply at once), a reply that already ended cannot be stopped, and a stopped
reply can be retried."""

import json
from pathlib import Path
from typing import Any

import websockets

from llama_farm.ollama_sim.settings import SimSettings
from tests.support.brokers import RunningBroker
from tests.support.farm import (
    events,
    new_thread,
    running_farm,
    send_and_stream,
    wait_until,
    ws_url,
)


async def test_stop_keeps_the_partial_reply_and_frees_the_worker(
    tmp_path: Path, broker: RunningBroker
) -> None:
    # One worker with one slot, and a reply that would take ~25 s to generate. (This user
    # sends more than the 3-message burst within seconds: a faster refill for the test.)
    sim = SimSettings(ttft_ms=10, tokens_per_s=40, reply_tokens=1000)
    fast = {"rate_send_per_minute": 600}
    async with running_farm(
        tmp_path, broker, sim=sim, concurrency=1, coordinator_settings=fast
    ) as farm:
        browser = farm.browser()
        thread_id = await new_thread(browser)
        cookie = browser.cookies.get("farm_session")
        async with websockets.connect(
            ws_url(farm, thread_id), additional_headers={"Cookie": f"farm_session={cookie}"}
        ) as socket:
            assert json.loads(await socket.recv())["type"] == "snapshot"
            sent = await browser.post(f"/api/threads/{thread_id}/messages", json={"text": "go"})
            reply = sent.json()["reply"]
            streamed: list[str] = []
            async for event in events(socket):
                if event["type"] == "chunk":
                    streamed.append(event["text"])
                if len(streamed) >= 3:
                    break
            stop_url = f"/api/threads/{thread_id}/messages/{reply['message_id']}/stop"
            stopped = await browser.post(stop_url)
            assert stopped.status_code == 200, stopped.text
            final = stopped.json()
            assert final["state"] == "cancelled"
            assert final["content"]
            # What the user saw streaming is what was kept (give or take chunks in flight).
            assert "".join(streamed).startswith(final["content"]) or final["content"].startswith(
                "".join(streamed)
            )
            assert "stopped by" in final["error"]

            # The worker closed its HTTP stream to Ollama: the generation stopped there too.
            async def aborted() -> bool:
                counts = (await browser.get(farm.sim_url + "/sim/streams")).json()
                return bool(counts["active"] == 0 and counts["aborted"] == 1)

            await wait_until(aborted, what="the Ollama stream to be closed")

        again = await browser.post(stop_url)
        assert again.status_code == 409
        assert "already ended" in again.json()["error"]

        # The worker sends the text it generated before it heard: the reply keeps it, so
        # the stored reply holds at least what was streamed, and stays cancelled.
        async def kept() -> dict[str, Any]:
            stored: dict[str, Any] = (await browser.get(f"/api/threads/{thread_id}")).json()
            last: dict[str, Any] = stored["messages"][-1]
            return last

        async def all_kept() -> bool:
            return str((await kept())["content"]).startswith("".join(streamed))

        await wait_until(all_kept, what="the text streamed before the stop to be kept")
        stored = await kept()
        assert stored["state"] == "cancelled"
        assert stored["content"].startswith(final["content"])

        # The worker's only slot is free again: the next reply is served, not refused.
        follow = await send_and_stream(farm, browser, thread_id, "[[sim:tokens=5]] again")
        assert follow.final["state"] == "done"

        # The stopped reply can be generated again: a new job, from an empty text.
        retry_url = stop_url.removesuffix("/stop") + "/retry"
        retried = await browser.post(retry_url)
        assert retried.status_code == 201, retried.text
        assert (retried.json()["state"], retried.json()["content"]) == ("queued", "")
        assert retried.json()["job_id"] != reply["job_id"]
        assert (await browser.post(retry_url)).status_code == 409  # one at a time
        stopped_again = await browser.post(stop_url)
        assert stopped_again.json()["state"] == "cancelled"
        done_reply = follow.final["message_id"]
        done_url = f"/api/threads/{thread_id}/messages/{done_reply}/retry"
        regenerated = await browser.post(done_url)  # a good reply, generated again
        assert regenerated.status_code == 201, regenerated.text
        assert (regenerated.json()["state"], regenerated.json()["content"]) == ("queued", "")
        assert regenerated.json()["job_id"] != follow.final["job_id"]
        refused = await browser.post(done_url)  # not while it is queued or generating
        assert refused.status_code == 409
        assert "only a reply that ended" in refused.json()["error"]
        assert (await browser.post(stop_url.removesuffix("/stop") + "/bogus")).status_code == 404


async def test_stopping_a_queued_reply_never_reaches_a_worker(
    tmp_path: Path, broker: RunningBroker
) -> None:
    sim = SimSettings(ttft_ms=10, tokens_per_s=40, reply_tokens=1000)
    async with running_farm(tmp_path, broker, sim=sim, concurrency=1) as farm:
        # Someone else's long reply holds the only slot.
        busy = farm.browser()
        busy_thread = await new_thread(busy)
        long = await busy.post(f"/api/threads/{busy_thread}/messages", json={"text": "long"})
        assert long.status_code == 201, long.text

        browser = farm.browser()
        thread_id = await new_thread(browser)
        sent = await browser.post(f"/api/threads/{thread_id}/messages", json={"text": "hi"})
        assert sent.status_code == 201, sent.text
        reply = sent.json()["reply"]

        async def queued_first() -> bool:
            snapshot = (await browser.get(f"/api/threads/{thread_id}")).json()
            return bool(snapshot["messages"][-1]["queue_position"] == 1)

        await wait_until(queued_first, what="the reply to wait first in the queue")
        stop_url = f"/api/threads/{thread_id}/messages/{reply['message_id']}/stop"
        # A stranger cannot stop someone else's reply.
        assert (await busy.post(stop_url)).status_code == 404
        stopped = await browser.post(stop_url)
        assert stopped.status_code == 200, stopped.text
        assert (stopped.json()["state"], stopped.json()["content"]) == ("cancelled", "")
        stop_long = f"/api/threads/{busy_thread}/messages/{long.json()['reply']['message_id']}/stop"
        assert (await busy.post(stop_long)).json()["state"] == "cancelled"
        # The worker heard the cancel: its only slot serves the next reply.
        follow = await send_and_stream(farm, busy, busy_thread, "[[sim:tokens=3]] next")
        assert follow.final["state"] == "done"
