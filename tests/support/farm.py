"""The farm in the test's own event loop: simulator, coordinator, webapp and workers on a
real broker and a real SQLite file, talking over real MQTT and HTTP."""

import asyncio
import inspect
import io
import json
import os
import secrets
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from pydantic import SecretStr

from coordinator.mqtt.accounts import BrokerAccounts, Dynsec
from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from farm_protocol import acl
from farm_protocol.chat import SESSION_HEADER
from farm_runtime.broker import BrokerSettings
from farm_runtime.http_serving import serve_app
from farm_runtime.lifecycle import run_services
from fleet_worker.service import FleetWorker
from fleet_worker.settings import WorkerSettings
from llama_farm.ollama_sim.app import create_sim_app
from llama_farm.ollama_sim.settings import SimSettings
from llama_farm.ports import free_port
from tests.support.brokers import RunningBroker
from tests.support.processes import broker_env, start_service, wait_http
from webapp.service import Webapp
from webapp.settings import WebappSettings


@dataclass
class Farm:
    web_url: str
    sim_url: str
    coordinator: Coordinator
    workers: list[FleetWorker]
    broker: RunningBroker
    stop: asyncio.Event
    webapp_settings: WebappSettings
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    # the coordinators beyond the first (``coordinators=N``), as processes, and their URLs
    more_coordinators: list[subprocess.Popen[bytes]] = field(default_factory=list)
    more_coordinator_urls: list[str] = field(default_factory=list)

    @property
    def coordinator_url(self) -> str:
        return f"http://127.0.0.1:{self.coordinator.settings.http_port}"

    def admin(self, token: str) -> httpx.AsyncClient:
        """An HTTP client of the coordinator's admin API with this bearer token."""
        client = httpx.AsyncClient(
            base_url=self.coordinator_url + "/api/v1/admin",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        self.clients.append(client)
        return client

    def coordinator_client(self) -> httpx.AsyncClient:
        """The coordinator's chat API, as the webapp calls it (for one session)."""
        client = httpx.AsyncClient(
            base_url=self.coordinator_url + "/api/v1/chat",
            headers={
                "Authorization": f"Bearer {self.webapp_settings.service_token.get_secret_value()}",
                SESSION_HEADER: secrets.token_urlsafe(32),
            },
            timeout=10,
        )
        self.clients.append(client)
        return client

    def browser(self) -> httpx.AsyncClient:
        """An HTTP client with its own cookie jar: one anonymous browser."""
        client = httpx.AsyncClient(base_url=self.web_url, timeout=10)
        self.clients.append(client)
        return client


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout_s: float = 10.0,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` (plain or async) until it is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s

    async def holds() -> bool:
        result = predicate()
        return await result if inspect.isawaitable(result) else result

    while not await holds():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def service_accounts(broker: RunningBroker) -> dict[str, BrokerSettings]:
    """On Mosquitto, the least-privilege service accounts (made by the project's own
    `broker setup` code); on amqtt (anonymous for now), none."""
    if broker.service_passwords is not None:  # amqtt: the passwords it was started with
        return {
            name: broker.settings().model_copy(
                update={"username": name, "password": SecretStr(password)}
            )
            for name, password in broker.service_passwords.items()
        }
    if broker.admin_password is None:
        return {}
    admin = broker.settings().model_copy(
        update={"username": "admin", "password": SecretStr(broker.admin_password)}
    )
    passwords = await BrokerAccounts(Dynsec(admin)).setup_services({})
    return {
        name: broker.settings().model_copy(
            update={"username": name, "password": SecretStr(password)}
        )
        for name, password in passwords.items()
    }


def provisioning(broker: RunningBroker) -> dict[str, Any]:
    """Coordinator settings that let it manage worker accounts on this broker."""
    if broker.admin_password is None:
        return {}
    return {
        "broker_admin_username": "admin",
        "broker_admin_password": SecretStr(broker.admin_password),
        "key_secret": SecretStr(secrets.token_urlsafe(32)),
    }


@asynccontextmanager
async def running_farm(
    tmp_path: Path,
    broker: RunningBroker,
    *,
    sim: SimSettings | None = None,
    workers: int = 1,
    concurrency: int = 2,
    coordinator_settings: dict[str, Any] | None = None,
    webapp: bool = True,
    coordinators: int = 1,
    webapp_settings: dict[str, Any] | None = None,
) -> AsyncIterator[Farm]:
    """A whole farm in this process. With ``webapp=False`` the test runs the webapp
    itself (``farm.webapp_settings`` says how), e.g. as a process it can kill. With
    ``coordinators=N`` that many more coordinator processes share the database and the
    broker, as a scaled-out deployment runs them (the webapp calls the first)."""
    stop = asyncio.Event()
    sim = (sim or SimSettings(ttft_ms=20, tokens_per_s=200)).model_copy(
        update={"host": "127.0.0.1", "port": free_port()}
    )
    token = SecretStr(secrets.token_urlsafe(24))
    accounts = await service_accounts(broker)
    defaults: dict[str, Any] = {
        "database_url": broker.database_url or f"sqlite:///{tmp_path / 'farm.sqlite3'}",
        "broker": accounts.get(acl.COORDINATOR, broker.settings()),
        "http_port": free_port(),
        "service_token": token,
        "coordinator_client_id": f"coordinator-{uuid.uuid4().hex[:8]}",
    }
    coordinator = Coordinator(
        CoordinatorSettings(**(defaults | provisioning(broker) | (coordinator_settings or {})))
    )
    token = coordinator.settings.service_token
    fleet = []
    for i in range(workers):
        info, key = await coordinator.runner.call(coordinator.registry.add, f"test worker {i}")
        if not coordinator.provisioner.managed:
            await broker.add_client(info.id, key)
        await coordinator.provisioner.worker_added(info.id, key)
        settings = WorkerSettings(
            broker=BrokerSettings(url=broker.settings().url),
            worker_id=info.id,
            api_key=SecretStr(key),
            ollama_host=f"http://127.0.0.1:{sim.port}",
            concurrency=concurrency,
            heartbeat_s=0.5,
        )
        fleet.append(FleetWorker(settings, drain_grace_s=1.0))
    web_port = free_port()
    webapp_config = WebappSettings(
        web_port=web_port,
        coordinator_url=f"http://127.0.0.1:{coordinator.settings.http_port}",
        service_token=token,
        broker=accounts.get(acl.WEBAPP, broker.settings()),
        **(webapp_settings or {}),
    )
    services = {
        "simulator": serve_app(create_sim_app(sim), sim.host, sim.port, stop),
        "coordinator": coordinator.run(stop),
        **({"webapp": Webapp(webapp_config).run(stop)} if webapp else {}),
        **{f"worker-{i}": w.run(stop) for i, w in enumerate(fleet)},
    }
    task = asyncio.create_task(run_services(services, stop))
    farm = Farm(
        f"http://127.0.0.1:{web_port}",
        f"http://127.0.0.1:{sim.port}",
        coordinator,
        fleet,
        broker,
        stop,
        webapp_config,
    )
    try:
        probe = farm.browser() if webapp else farm.coordinator_client()

        async def fleet_online() -> bool:
            try:
                response = await probe.get("/api/models" if webapp else "/models")
            except httpx.HTTPError:
                return False
            return response.status_code == 200 and response.json()["workers_online"] == workers

        await wait_until(fleet_online, what="the fleet to come online")
        for n in range(2, coordinators + 1):
            process, url = await _coordinator_process(coordinator.settings, tmp_path, n)
            farm.more_coordinators.append(process)
            farm.more_coordinator_urls.append(url)
        yield farm
    finally:
        for process in farm.more_coordinators:
            process.send_signal(signal.SIGINT)
        for process in farm.more_coordinators:
            await asyncio.to_thread(process.wait, 20)
        stop.set()
        for client in farm.clients:
            await client.aclose()
        await stopped_within(task, 15)


async def _coordinator_process(
    like: CoordinatorSettings, tmp_path: Path, n: int
) -> tuple[subprocess.Popen[bytes], str]:
    """Coordinator number ``n``, as a process: the same database, broker account and
    service token as ``like``, its own HTTP port and MQTT client id; and its URL."""
    port = free_port()
    env = {
        **os.environ,
        **broker_env(like.broker),
        "FARM_DATABASE_URL": like.database_url,
        "FARM_HTTP_PORT": str(port),
        "FARM_SERVICE_TOKEN": like.service_token.get_secret_value(),
        "FARM_COORDINATOR_CLIENT_ID": f"{like.coordinator_client_id}-{n}",
        "FARM_API_KEY_BACKLOG_PER_SLOT": str(like.api_key_backlog_per_slot),
        "FARM_CHAT_BACKLOG": str(like.chat_backlog),
    }
    log = tmp_path / f"coordinator-{n}.log"
    process = start_service(["coordinator"], env, tmp_path, log)
    await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/metrics", process, log)
    return process, f"http://127.0.0.1:{port}"


def webapp_process(
    farm: Farm, log: Path, port: int | None = None, coordinator_urls: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """A webapp as a process, like the farm's own (its port unless ``port`` is given), for
    the coordinators at ``coordinator_urls`` (the farm's first one unless given); returns
    once its health check passes."""
    s = farm.webapp_settings
    port = port or s.web_port
    env = {
        **os.environ,
        **broker_env(s.broker),
        "FARM_WEB_PORT": str(port),
        "FARM_COORDINATOR_URL": ",".join(coordinator_urls or [s.coordinator_url]),
        "FARM_SERVICE_TOKEN": s.service_token.get_secret_value(),
    }
    process = start_service(["webapp"], env, log.parent, log)
    ok: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200  # noqa: E731
    wait_http(f"http://127.0.0.1:{port}/healthz", process, log, ok, timeout_s=20)
    return process


async def stopped_within(task: asyncio.Task[None], timeout_s: float) -> None:
    """Wait for the farm's services to stop; if they do not, fail saying where each task
    still running is stuck (a bare timeout says nothing about which service hangs)."""
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if done:
        return task.result()
    stuck = []
    for other in asyncio.all_tasks():
        if other is not asyncio.current_task() and not other.done():
            out = io.StringIO()
            other.print_stack(limit=30, file=out)
            stuck.append(out.getvalue())
    task.cancel()
    await asyncio.wait({task}, timeout=5)  # let them close their sockets, if they can
    raise AssertionError(
        f"the farm did not stop within {timeout_s:.0f} s; still running:\n" + "\n".join(stuck)
    )


async def new_thread(browser: httpx.AsyncClient, system_prompt: str = "") -> str:
    response = await browser.post("/api/threads", json={"system_prompt": system_prompt})
    assert response.status_code == 201, response.text
    thread_id: str = response.json()["thread_id"]
    return thread_id


def ws_url(farm: Farm, thread_id: str) -> str:
    return farm.web_url.replace("http://", "ws://") + f"/ws/threads/{thread_id}"


@dataclass
class Streamed:
    reply_id: str
    chunks: list[str]
    final: dict[str, Any]
    chunks_before_final: int


async def send_and_stream(
    farm: Farm, browser: httpx.AsyncClient, thread_id: str, text: str, model: str | None = None
) -> Streamed:
    """Open the thread's websocket like a browser, send ``text``, and collect the live
    chunks of the reply until its final message event."""
    cookie = browser.cookies.get("farm_session")
    assert cookie, "the browser has no session cookie yet"
    async with websockets.connect(
        ws_url(farm, thread_id), additional_headers={"Cookie": f"farm_session={cookie}"}
    ) as socket:
        first = json.loads(await socket.recv())
        assert first["type"] == "snapshot"
        response = await browser.post(
            f"/api/threads/{thread_id}/messages", json={"text": text, "model": model}
        )
        assert response.status_code == 201, response.text
        reply = response.json()["reply"]
        events, final = await until_final(socket, reply["message_id"])
        chunks = [e["text"] for e in events if e["job_id"] == reply["job_id"]]
        return Streamed(reply["message_id"], chunks, final, len(chunks))


async def events(socket: Any, timeout_s: float = 10) -> AsyncIterator[dict[str, Any]]:
    """A thread websocket's events one by one (the webapp sends what queued up together,
    as one list)."""
    while True:
        data = json.loads(await asyncio.wait_for(socket.recv(), timeout_s))
        for event in data if isinstance(data, list) else [data]:
            yield event


async def until_final(
    socket: Any, message_id: str, timeout_s: float = 20
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read a thread's websocket until message ``message_id`` ends (done, failed, ...):
    the chunk events on the way, in order, and the final message."""
    chunks: list[dict[str, Any]] = []
    async for event in events(socket, timeout_s):
        if event["type"] == "chunk":
            chunks.append(event)
        elif (
            event["type"] == "message"
            and event["message"]["message_id"] == message_id
            and event["message"]["state"] not in ("queued", "generating")
        ):
            return chunks, event["message"]
    raise AssertionError("the events ended")  # events() never does
