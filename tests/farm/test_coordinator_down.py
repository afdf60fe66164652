"""The webapp while the coordinator does not answer: its health check fails (a load
balancer sends its traffic elsewhere), every route that needs it says so clearly (503,
in the OpenAI API's shape on /v1, with a Retry-After and a code that means "down", not
"busy"), and the webapp serves normally again as soon as the coordinator is back, on the
same client."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from pydantic import SecretStr

from farm_runtime.broker import BrokerSettings
from llama_farm.ports import free_port
from tests.support.brokers import RunningBroker
from tests.support.farm import running_farm, wait_until
from webapp.service import Webapp
from webapp.settings import WebappSettings


@asynccontextmanager
async def webapp(coordinator_port: int, token: str, broker: BrokerSettings) -> AsyncIterator[str]:
    settings = WebappSettings(
        web_port=free_port(),
        coordinator_url=f"http://127.0.0.1:{coordinator_port}",
        service_token=SecretStr(token),
        broker=broker,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(Webapp(settings).run(stop))
    url = f"http://127.0.0.1:{settings.web_port}"
    try:

        async def serving() -> bool:
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(url + "/")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(serving, what="the webapp to serve its pages")
        yield url
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


async def test_while_the_coordinator_is_down_the_webapp_says_so_and_recovers(
    tmp_path: Path, broker: RunningBroker
) -> None:
    coordinator_port = free_port()  # nothing listens here yet
    token = "t" * 32
    async with (
        webapp(coordinator_port, token, broker.settings()) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as browser,
    ):
        health = await browser.get("/healthz")
        assert health.status_code == 503
        assert health.json()["problems"] == ["no coordinator answers"]
        created = await browser.post("/api/threads", json={"system_prompt": ""})
        assert created.status_code == 503
        assert created.json() == {"error": "the chat service is unavailable; try again shortly"}

        api = {"Authorization": "Bearer sk-anything"}
        body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
        completion = await browser.post("/v1/chat/completions", json=body, headers=api)
        assert completion.status_code == 503
        assert completion.headers["Retry-After"] == "5"
        error = completion.json()["error"]
        assert error["type"] == "server_error"
        assert error["code"] == "service_unavailable"
        assert "unavailable" in error["message"]
        assert (await browser.get("/v1/models", headers=api)).status_code == 503

        # The coordinator comes up on that port: the same webapp now gets through.
        settings = {"http_port": coordinator_port, "service_token": SecretStr(token)}
        async with running_farm(tmp_path, broker, webapp=False, coordinator_settings=settings):
            created = await browser.post("/api/threads", json={"system_prompt": ""})
            assert created.status_code == 201, created.text

            async def healthy() -> bool:
                return (await browser.get("/healthz")).status_code == 200

            await wait_until(healthy, what="the webapp's health check to pass again")
            thread = await browser.get(f"/api/threads/{created.json()['thread_id']}")
            assert thread.status_code == 200
