"""Two coordinators and two webapps on one database and one Mosquitto, as a scaled-out
farm runs: the coordinators divide every job's progress (a shared subscription), each
webapp receives only the streams its own browsers watch, and every webapp knows both
coordinators.

A coordinator killed mid-stream (SIGKILL) leaves no reply stuck and no text lost: the
other takes its share. A webapp killed mid-stream loses its browsers, which reconnect to
the other webapp and end with exactly the stored text. A message sent through one webapp
streams live to a browser on the other. And the limits hold across coordinators."""

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from coordinator.keys.api_keys import ApiKeyStore
from farm_protocol.chat import SESSION_HEADER
from llama_farm.ollama_sim.settings import SimSettings
from llama_farm.ports import free_port
from tests.support.brokers import broker_of
from tests.support.farm import Farm, events, running_farm, until_final, webapp_process

REPLIES = 8


def _prompt(i: int) -> str:
    """Words that are all different, so that a doubled or missing piece shows."""
    return " ".join(f"w{i}.{n}" for n in range(120))


def _ws(web_url: str, thread_id: str) -> str:
    return web_url.replace("http://", "ws://") + f"/ws/threads/{thread_id}"


async def _watch(web_url: str, thread_id: str, cookie: str) -> tuple[Any, dict[str, Any]]:
    """A browser's websocket on ``thread_id``, and the snapshot it began with."""
    socket = await websockets.connect(
        _ws(web_url, thread_id), additional_headers={"Cookie": f"farm_session={cookie}"}
    )
    snapshot = json.loads(await socket.recv())
    assert snapshot["type"] == "snapshot"
    return socket, snapshot


async def _final(socket: Any, snapshot: dict[str, Any], reply_id: str) -> dict[str, Any]:
    """The reply as it ends: from the snapshot if it had ended already, else live."""
    for message in snapshot["messages"]:
        if message["message_id"] == reply_id and message["state"] not in ("queued", "generating"):
            return dict(message)
    _, final = await until_final(socket, reply_id, timeout_s=30)
    return final


async def _first_chunk(socket: Any) -> None:
    async for event in events(socket, 20):
        if event["type"] == "chunk":
            return


async def test_two_coordinators_and_two_webapps_survive_a_kill_of_each(
    tmp_path: Path, db_url: str
) -> None:
    # 120 words at 60 tokens/s: two seconds a reply, so the kills land mid-stream
    sim = SimSettings(reply="echo", ttft_ms=0, tokens_per_s=60)
    async with (
        broker_of("mosquitto") as broker,
        running_farm(
            tmp_path,
            broker,
            sim=sim,
            workers=2,
            concurrency=4,
            coordinators=2,
            webapp=False,
            # a job the killed one claimed but never sent is taken back after 2 s
            coordinator_settings={"database_url": db_url, "accept_timeout_s": 2},
        ) as farm,
    ):
        coordinators = [farm.coordinator_url, *farm.more_coordinator_urls]
        ports = [free_port(), free_port()]
        webapps = [
            webapp_process(farm, tmp_path / f"webapp-{n}.log", port, coordinators)
            for n, port in enumerate(ports)
        ]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        try:
            await _scenario(farm, urls, webapps)
        finally:
            for process in webapps:
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
            for process in webapps:
                await asyncio.to_thread(process.wait, 20)


async def _scenario(farm: Farm, urls: list[str], webapps: list[Any]) -> None:
    browsers = [httpx.AsyncClient(base_url=urls[i % 2], timeout=30) for i in range(REPLIES)]
    farm.clients.extend(browsers)
    threads, cookies = [], []
    for browser in browsers:
        made = await browser.post("/api/threads", json={"system_prompt": ""})
        assert made.status_code == 201, made.text
        threads.append(made.json()["thread_id"])
        cookies.append(str(browser.cookies.get("farm_session")))
    # each browser watches its thread on the OTHER webapp than the one it sends through
    watching = [await _watch(urls[(i + 1) % 2], threads[i], cookies[i]) for i in range(REPLIES)]
    try:
        await _streams(farm, urls, webapps, browsers, threads, cookies, watching)
    finally:
        for socket, _ in watching:
            await socket.close()


async def _streams(
    farm: Farm,
    urls: list[str],
    webapps: list[Any],
    browsers: list[httpx.AsyncClient],
    threads: list[str],
    cookies: list[str],
    watching: list[tuple[Any, dict[str, Any]]],
) -> None:
    replies = []
    for i, browser in enumerate(browsers):
        sent = await browser.post(f"/api/threads/{threads[i]}/messages", json={"text": _prompt(i)})
        assert sent.status_code == 201, sent.text
        replies.append(sent.json()["reply"])
    await asyncio.gather(*(_first_chunk(s) for s, _ in watching))  # every reply streams

    farm.more_coordinators[0].send_signal(signal.SIGKILL)  # coordinator 2, mid-stream
    webapps[1].send_signal(signal.SIGKILL)  # webapp 2, with half the browsers on it
    for i in range(REPLIES):
        if (i + 1) % 2 == 1:  # it watched on the webapp that died: reconnect to the other
            await watching[i][0].close()
            watching[i] = await _watch(urls[0], threads[i], cookies[i])
    finals = [
        await _final(socket, snapshot, replies[i]["message_id"])
        for i, (socket, snapshot) in enumerate(watching)
    ]
    assert [(f["state"], f["content"]) for f in finals] == [
        ("done", _prompt(i)) for i in range(REPLIES)
    ]
    # what is stored, seen from the webapp that lived
    for i in range(REPLIES):
        browser = httpx.AsyncClient(
            base_url=urls[0], timeout=10, cookies={"farm_session": cookies[i]}
        )
        farm.clients.append(browser)
        snapshot = (await browser.get(f"/api/threads/{threads[i]}")).json()
        assert snapshot["messages"][-1]["content"] == _prompt(i)
        assert snapshot["messages"][-1]["state"] == "done"
    # and the webapp that lived says it still can serve
    health = await browsers[0].get("/healthz")
    assert health.status_code == 200, health.text


async def test_a_webapp_without_a_coordinator_says_it_cannot_serve(tmp_path: Path) -> None:
    """Its health check fails (a load balancer sends its traffic elsewhere), and its API
    answers 503 with a code that means "down", not "busy"."""
    async with (
        broker_of("mosquitto") as broker,
        running_farm(tmp_path, broker, workers=1, coordinators=2, webapp=False) as farm,
    ):
        port = free_port()
        webapp = webapp_process(
            farm, tmp_path / "webapp.log", port, [farm.more_coordinator_urls[0]]
        )
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                assert (await client.get("/healthz")).status_code == 200
                farm.more_coordinators[0].send_signal(signal.SIGKILL)
                await asyncio.to_thread(farm.more_coordinators[0].wait, 10)
                answer = await client.post(
                    "/v1/chat/completions",
                    headers={"Authorization": "Bearer whatever"},
                    json={"model": "llama3", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert answer.status_code == 503
                assert answer.json()["error"]["code"] == "service_unavailable"
                for _ in range(100):  # within its health checks' period
                    health = await client.get("/healthz")
                    if health.status_code == 503:
                        break
                    await asyncio.sleep(0.1)
                assert health.status_code == 503, health.text
                assert "no coordinator answers" in health.json()["problems"]
        finally:
            webapp.send_signal(signal.SIGINT)
            await asyncio.to_thread(webapp.wait, 20)


@pytest.mark.parametrize("round_", range(3))
async def test_limits_hold_across_coordinator_processes(
    tmp_path: Path, db_url: str, round_: int
) -> None:
    """The sends of tests/store/test_limits_across_coordinators.py, through two
    coordinator processes' HTTP APIs at once: one user's new chats (a burst of 2), its
    replies (one generating and one waiting: a backlog of 1), and an API key's
    concurrency (2, and 2 more waiting: a backlog of 1 per slot)."""
    sim = SimSettings(ttft_ms=0, tokens_per_s=1, reply_tokens=100)  # replies outlast the test
    async with (
        broker_of("mosquitto") as broker,
        running_farm(
            tmp_path,
            broker,
            sim=sim,
            workers=1,
            concurrency=8,
            coordinators=2,
            webapp=False,
            coordinator_settings={
                "database_url": db_url,
                "api_key_backlog_per_slot": 1,
                "chat_backlog": 1,
            },
        ) as farm,
    ):
        token = farm.webapp_settings.service_token.get_secret_value()
        bases = [farm.coordinator_url, farm.more_coordinator_urls[0]]
        session = f"browser-{round_}-" + "x" * 32
        headers = {"Authorization": f"Bearer {token}", SESSION_HEADER: session}
        clients = [httpx.AsyncClient(base_url=b, headers=headers, timeout=20) for b in bases]
        farm.clients.extend(clients)
        await clients[0].get("/api/v1/chat/me")  # the user exists before the race

        made = await asyncio.gather(
            *(clients[i % 2].post("/api/v1/chat/threads", json={}) for i in range(6))
        )
        assert sorted(r.status_code for r in made) == [201, 201, 429, 429, 429, 429]
        threads = [r.json()["thread_id"] for r in made if r.status_code == 201]

        sent = await asyncio.gather(
            *(
                clients[i % 2].post(f"/api/v1/chat/threads/{t}/messages", json={"text": "hi"})
                for i, t in enumerate(threads + threads[:1])
            )
        )  # within the burst of 3 messages, so only the backlog refuses one
        assert sorted(r.status_code for r in sent) == [201, 201, 429]
        assert "replies generating or waiting" in max(sent, key=lambda r: r.status_code).text

        store = ApiKeyStore(farm.coordinator.runner.db)
        _, key = await farm.coordinator.runner.call(store.create, f"bot-{round_}", 2)
        asked = await asyncio.gather(
            *(
                clients[i % 2].post(
                    "/api/v1/programmatic/completions",
                    json={
                        "api_key": key,
                        "model": "llama3",
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                )
                for i in range(6)
            )
        )
        assert sorted(r.status_code for r in asked) == [201, 201, 201, 201, 429, 429]
