"""``llama-farm dev``: the whole farm in one process, for a laptop and for the browser test.

Embedded amqtt broker, coordinator on a SQLite file, webapp, one worker, and, when no
Ollama answers at ``OLLAMA_HOST``, the simulator (the UI then says replies are simulated).
"""

import asyncio
import contextlib
import logging
import os
import secrets
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from coordinator.errors import NotFound
from coordinator.keys.api_keys import ApiKeyStore
from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from coordinator.workers.registry import WorkerRegistry
from farm_protocol import acl
from farm_runtime.broker import BrokerSettings
from farm_runtime.http_serving import serve_app
from farm_runtime.lifecycle import TaskCrashed, run_services, run_with_signals
from fleet_worker.service import FleetWorker
from fleet_worker.settings import WorkerSettings
from llama_farm.embedded_broker import FarmAuth, embedded_broker
from llama_farm.ollama_sim.app import create_sim_app
from llama_farm.ollama_sim.settings import SimSettings
from llama_farm.ports import free_port, reserve
from webapp.service import Webapp
from webapp.settings import WebappSettings

log = logging.getLogger(__name__)

DEV_WORKER_ID = "dev-worker"


@dataclass(frozen=True, slots=True)
class DevOptions:
    port: int
    llm: str  # auto | sim | ollama
    data_dir: str
    broker_port: int
    host: str


def ollama_host_from_env() -> str:
    host = os.environ.get("OLLAMA_HOST", "http://127.0.0.1:11434")
    return host if "://" in host else f"http://{host}"


async def ollama_answers(host: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            response = await client.get(f"{host.rstrip('/')}/api/version")
            return response.status_code == 200
    except httpx.HTTPError:
        return False


async def _after_port(url: str, service: Coroutine[Any, Any, None]) -> None:
    """Start ``service`` once something listens at ``url`` (the in-process simulator
    starts alongside; without this the worker's first look finds nothing)."""
    parts = urlsplit(url)
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        break
    await service


def _dev_worker_key(workers: WorkerRegistry) -> str:
    """A fresh key for the in-process worker each run (keys are only stored hashed)."""
    try:
        return workers.rotate(DEV_WORKER_ID)
    except NotFound:
        return workers.add("dev worker", DEV_WORKER_ID)[1]


DEV_API_KEY_NAME = "llama-farm dev"


def _dev_api_key(keys: ApiKeyStore) -> str:
    """A fresh API key for OpenAI clients each run (keys are only stored hashed, so last
    run's cannot be shown again: it is revoked)."""
    for old in keys.list_keys():
        if old.name == DEV_API_KEY_NAME and old.revoked_at is None:
            keys.revoke(old.id)
    return keys.create(DEV_API_KEY_NAME, max_concurrent=8)[1]


async def _announce(host: str, port: int, lines: list[str], stop: asyncio.Event) -> None:
    """Print the URL once the chat answers, then stay until stop (a service, like the rest)."""
    for _ in range(400):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            await writer.wait_closed()
            break
        await asyncio.sleep(0.05)
    print("\n".join(lines), flush=True)
    await stop.wait()


async def _dev(options: DevOptions, stop: asyncio.Event) -> int:
    data = Path(options.data_dir)
    ollama_host = ollama_host_from_env()
    found = options.llm != "sim" and await ollama_answers(ollama_host)
    if options.llm == "ollama" and not found:
        print(f"llama-farm dev: no Ollama answers at {ollama_host}", file=sys.stderr)
        return 1
    services = {}
    reserve(options.port, options.broker_port)  # its own picks must not take these
    if found:
        replies = f"Ollama at {ollama_host}"
    else:
        sim = SimSettings(host="127.0.0.1", port=free_port())
        services["simulator"] = serve_app(create_sim_app(sim), sim.host, sim.port, stop)
        ollama_host = f"http://{sim.host}:{sim.port}"
        replies = f"simulated by {ollama_host}" + (
            f" (no Ollama at {ollama_host_from_env()})" if options.llm == "auto" else ""
        )

    broker_port = options.broker_port or free_port()
    broker = BrokerSettings(url=f"mqtt://127.0.0.1:{broker_port}")
    # The embedded broker checks the same accounts and topic rules as Mosquitto does in
    # production: workers by their keys in the database, services by these passwords.
    database_url = f"sqlite:///{data / 'dev.sqlite3'}"
    passwords = {name: secrets.token_urlsafe(16) for name in acl.SERVICES}

    def login(name: str) -> BrokerSettings:
        return broker.model_copy(update={"username": name, "password": SecretStr(passwords[name])})

    token = SecretStr(secrets.token_urlsafe(32))
    coordinator = Coordinator(
        CoordinatorSettings(
            database_url=database_url,
            broker=login(acl.COORDINATOR),
            http_port=free_port(),
            service_token=token,
            coordinator_client_id="farm-coordinator-dev",
        )
    )
    key = await coordinator.runner.call(_dev_worker_key, coordinator.registry)
    api_key = await coordinator.runner.call(_dev_api_key, ApiKeyStore(coordinator.runner.db))
    worker = FleetWorker(
        WorkerSettings(
            broker=BrokerSettings(url=broker.url),
            worker_id=DEV_WORKER_ID,
            api_key=SecretStr(key),
            ollama_host=ollama_host,
            concurrency=2,
        ),
        drain_grace_s=1.0,
    )
    webapp = Webapp(
        WebappSettings(
            web_host=options.host,
            web_port=options.port,
            service_token=token,
            broker=login(acl.WEBAPP),
            coordinator_url=f"http://127.0.0.1:{coordinator.settings.http_port}",
        )
    )
    url = f"http://{options.host}:{options.port}/"
    lines = [
        "",
        "llama-farm dev is running",
        f"  Chat:     {url}",
        f"  Replies:  {replies}",
        f"  API:      {url}v1 (OpenAI-compatible; API key {api_key})",
        f"  Broker:   {broker.url} (embedded amqtt; watch it read-only with",
        f"            mosquitto_sub -p {broker_port} -u {acl.OBSERVER} "
        f"-P {passwords[acl.OBSERVER]} -t 'farm/#' -v)",
        f"  Database: {data / 'dev.sqlite3'}",
        "Press Ctrl-C to stop.",
        "",
    ]
    async with embedded_broker(broker_port, auth=FarmAuth(database_url, passwords)):
        services |= {
            "coordinator": coordinator.run(stop),
            "webapp": webapp.run(stop),
            "worker": _after_port(ollama_host, worker.run(stop)),
            "announce": _announce(options.host, options.port, lines, stop),
        }
        try:
            await run_services(services, stop)
        except TaskCrashed as exc:
            print(f"llama-farm dev: {exc}", file=sys.stderr)
            return 1
    print("llama-farm dev stopped.", flush=True)
    return 0


def run_dev(options: DevOptions) -> int:
    Path(options.data_dir).mkdir(parents=True, exist_ok=True)
    result: list[int] = []

    async def main(stop: asyncio.Event) -> None:
        result.append(await _dev(options, stop))

    run_with_signals(main)
    return result[0] if result else 0
