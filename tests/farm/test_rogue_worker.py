"""Defence in depth: even if a broker lets a rogue worker's messages through (here the test
account may publish anywhere under farm/), nobody sees its text. The coordinator stores
only the holder's chunks, and the webapp forwards to browsers only the chunks of the
worker and attempt the coordinator named. On Mosquitto and on amqtt."""

import asyncio
import json
from pathlib import Path

import websockets

from farm_protocol import topics
from farm_protocol.codec import encode
from farm_protocol.payloads import JobChunk, JobDone
from farm_runtime.broker import make_client
from llama_farm.ollama_sim.settings import SimSettings
from tests.support.brokers import RunningBroker
from tests.support.farm import new_thread, running_farm, until_final, ws_url


async def test_a_rogue_workers_chunks_never_reach_a_browser(
    tmp_path: Path, broker: RunningBroker
) -> None:
    sim = SimSettings(ttft_ms=300, tokens_per_s=60, reply_tokens=60)
    async with running_farm(tmp_path, broker, sim=sim) as farm:
        browser = farm.browser()
        thread_id = await new_thread(browser)
        cookie = browser.cookies.get("farm_session")
        async with (
            websockets.connect(
                ws_url(farm, thread_id), additional_headers={"Cookie": f"farm_session={cookie}"}
            ) as socket,
            make_client(broker.settings(), identifier="rogue") as rogue,
        ):
            assert json.loads(await socket.recv())["type"] == "snapshot"
            sent = await browser.post(f"/api/threads/{thread_id}/messages", json={"text": "hi"})
            reply = sent.json()["reply"]
            job_id = reply["job_id"]

            async def inject() -> None:
                for seq in range(40):
                    for worker, attempt in (("evil", 1), ("evil", 99), ("test-worker-0", 99)):
                        chunk = JobChunk(job_id=job_id, attempt=attempt, seq=seq, text="EVIL ")
                        await rogue.publish(
                            topics.job_events(worker, thread_id, job_id), encode(chunk), qos=1
                        )
                    await asyncio.sleep(0.02)
                fake_done = JobDone(job_id=job_id, attempt=1, chunks=1, chars=5, sha256="0" * 64)
                with_topic = topics.job_events("evil", thread_id, job_id)
                await rogue.publish(with_topic, encode(fake_done), qos=1)

            injector = asyncio.create_task(inject())
            events, final = await until_final(socket, reply["message_id"])
            seen = [event["text"] for event in events]
            await injector
        assert final["state"] == "done"
        assert "EVIL" not in "".join(seen)
        assert "EVIL" not in final["content"]
        assert "".join(seen) == final["content"]
