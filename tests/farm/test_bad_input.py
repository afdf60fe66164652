"""Bad input gets a clear error or a logged drop, and the farm keeps serving."""

import asyncio
import json
import os
import sys
from pathlib import Path

import aiomqtt
import pytest
import websockets

from farm_protocol import topics
from farm_protocol.chat import MemberView
from farm_protocol.codec import encode
from farm_protocol.payloads import JobCheckpoint, MembersEvent
from llama_farm.ollama_sim.settings import SimSettings
from tests.support.brokers import RunningBroker, broker_of
from tests.support.farm import new_thread, running_farm, send_and_stream, ws_url


async def test_garbage_and_spoofed_messages_are_dropped(
    tmp_path: Path, broker: RunningBroker, caplog: pytest.LogCaptureFixture
) -> None:
    sim = SimSettings(reply="echo", ttft_ms=5, tokens_per_s=0)
    async with running_farm(tmp_path, broker, sim=sim) as farm:
        worker_id = farm.workers[0].worker_id
        browser = farm.browser()
        thread_id = await new_thread(browser)
        watched = topics.thread_events(thread_id)
        cookie = {"Cookie": f"farm_session={browser.cookies.get('farm_session')}"}
        watching = await websockets.connect(ws_url(farm, thread_id), additional_headers=cookie)
        assert json.loads(await watching.recv())["type"] == "snapshot"  # the webapp listens
        settings = broker.settings()
        password = settings.password.get_secret_value() if settings.password else None
        async with aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            username=settings.username,
            password=password,
            identifier="rogue",
        ) as rogue:
            # first (a line a source is logged in 10 s): a member list that names another
            # thread than its topic (a spoofed topic)
            members = MembersEvent(thread_id="t2", members=[MemberView(user_id="u", name="x")])
            await rogue.publish(watched, encode(members), qos=1)
            junk = [b"", b"\xff\xfe not utf-8", b"{", b'{"kind":"chunk"}', b"x" * 300_000]
            for payload in junk:
                await rogue.publish(topics.job_events(worker_id, thread_id, "job1"), payload, qos=1)
                await rogue.publish(
                    topics.job_progress(worker_id, thread_id, "job1"), payload, qos=1
                )
                await rogue.publish(topics.worker_status(worker_id), payload, qos=1)
                await rogue.publish(topics.worker_heartbeat(worker_id), payload, qos=1)
                await rogue.publish(topics.worker_assign(worker_id), payload, qos=1)
                await rogue.publish(watched, payload, qos=1)
            # progress whose payload names another job than its topic (a spoofed topic)
            spoof = JobCheckpoint(job_id="other", attempt=1, texts=["injected"])
            await rogue.publish(
                topics.job_progress(worker_id, thread_id, "job1"), encode(spoof), qos=1
            )
            # progress of a job nobody holds
            await rogue.publish(
                topics.job_progress(worker_id, thread_id, "nojob"),
                encode(JobCheckpoint(job_id="nojob", attempt=1, texts=["x"])),
                qos=1,
            )

        await watching.close()
        streamed = await send_and_stream(farm, browser, thread_id, "still alive after junk")
        assert streamed.final["state"] == "done"
        assert streamed.final["content"] == "still alive after junk"
    dropped = [r for r in caplog.records if "dropped message" in r.getMessage()]
    assert dropped, "invalid payloads are logged when dropped"
    assert all(len(r.getMessage()) < 2000 for r in dropped), "log lines stay short"
    # 33 bad messages on one worker's topics and a thread's: a line a source (a worker, a
    # thread, a topic of the worker's own) and service in 10 s, not one a message
    assert len(dropped) <= 8, [r.getMessage() for r in dropped]
    assert any("payload thread differs from topic thread" in r.getMessage() for r in dropped)


async def test_http_bad_input_gets_clear_errors(tmp_path: Path, broker: RunningBroker) -> None:
    sim = SimSettings(ttft_ms=5, tokens_per_s=5, reply_tokens=50)
    async with running_farm(tmp_path, broker, sim=sim) as farm:
        browser = farm.browser()
        thread_id = await new_thread(browser)
        url = f"/api/threads/{thread_id}/messages"

        huge = await browser.post(url, json={"text": "x" * 200_000})
        assert huge.status_code == 400
        assert "text" in huge.json()["error"]
        too_big = await browser.post(url, content=b'{"text": "' + b"y" * 2_000_000 + b'"}')
        assert too_big.status_code == 413
        unknown = await browser.post(url, json={"text": "hi", "model": "gpt-99"})
        assert unknown.status_code == 404
        assert "not served" in unknown.json()["error"]
        not_json = await browser.post(url, content=b"not json")
        assert not_json.status_code == 400
        missing = await browser.get("/api/threads/0123456789abcdef")
        assert missing.status_code == 404
        bad_id = await browser.get("/api/threads/..%2F..%2Fetc")
        assert bad_id.status_code == 404


async def test_worker_with_a_wrong_key_exits_with_a_clear_message(tmp_path: Path) -> None:
    async with broker_of("mosquitto") as broker:
        env = dict(
            os.environ,
            FARM_BROKER__URL=f"mqtt://127.0.0.1:{broker.port}",
            FARM_WORKER_ID="ghost",
            FARM_API_KEY="lf_wrong",
            FARM_OLLAMA_HOST="http://127.0.0.1:9",
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fleet_worker.cli",
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 3
    assert b"refused our credentials" in stderr
    assert b"FARM_API_KEY" in stderr
    assert b"Traceback" not in stderr
