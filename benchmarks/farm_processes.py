"""A farm as it is deployed, one process per service, for benchmarks: the simulator,
the coordinator, the webapp and a fleet process (``python -m benchmarks.farm_processes
fleet``) hosting any number of real ``FleetWorker``s, each its own MQTT client with its
own key. The broker is Mosquitto (its own process) or the embedded amqtt (in the
benchmark's process, as `llama-farm dev` embeds it). The benchmark's process is the
client; nothing it does shares an event loop with the farm."""

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import SecretStr

from coordinator.db.database import migrate, open_database
from coordinator.keys.api_keys import ApiKeyStore
from coordinator.workers.registry import WorkerRegistry
from llama_farm.ports import free_port
from tests.support.brokers import RunningBroker, broker_of
from tests.support.processes import broker_env, start_service, wait_http

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class ProcessFarm:
    web_url: str
    sim_url: str
    coordinator_url: str
    service_token: str
    api_key: str
    broker: RunningBroker
    database_url: str
    work: Path = Path()
    worker_keys: list[tuple[str, str]] = field(default_factory=list)  # (worker id, key)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def log_size(self, name: str) -> int:
        return (self.work / f"{name}.log").stat().st_size

    def log_lines_since(self, name: str, offset: int) -> int:
        with (self.work / f"{name}.log").open("rb") as log:
            log.seek(offset)
            return log.read().count(b"\n")


@asynccontextmanager
async def process_farm(
    broker_kind: str,
    *,
    workers: int = 1,
    concurrency: int = 4,
    sim: dict[str, str] | None = None,
    coordinator: dict[str, str] | None = None,
    profile_coordinator: Path | None = None,
) -> AsyncIterator[ProcessFarm]:
    """``profile_coordinator``: run the coordinator under cProfile, writing there when it
    stops (its event-loop thread only)."""
    with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp:
        work = Path(tmp)
        async with broker_of(broker_kind) as broker:
            # amqtt checks workers' keys against the farm's database: use the one it reads
            database_url = broker.database_url or f"sqlite:///{work / 'farm.sqlite3'}"
            db = open_database(database_url)
            migrate(db)
            store = WorkerRegistry(db, grace_s=10)
            keys = [store.add(f"bench worker {i}") for i in range(workers)]
            _, api_key = ApiKeyStore(db).create("bench", 1000)
            db.close()
            for info, key in keys:
                await broker.add_client(info.id, key)
            token = secrets.token_urlsafe(24)
            ports = {name: free_port() for name in ("sim", "coordinator", "web")}
            base = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
            commands = {
                "sim": (
                    ["sim-ollama"],
                    {"FARM_SIM_PORT": str(ports["sim"]), **(sim or {})},
                    f"http://127.0.0.1:{ports['sim']}/api/version",
                ),
                "coordinator": (
                    ["coordinator"],
                    {
                        "FARM_DATABASE_URL": database_url,
                        "FARM_HTTP_PORT": str(ports["coordinator"]),
                        "FARM_SERVICE_TOKEN": token,
                        "FARM_MAX_QUEUED": "1000000",
                        **broker_env(broker.settings()),
                        **(coordinator or {}),
                    },
                    f"http://127.0.0.1:{ports['coordinator']}/metrics",
                ),
                "webapp": (
                    ["webapp"],
                    {
                        "FARM_WEB_PORT": str(ports["web"]),
                        "FARM_COORDINATOR_URL": f"http://127.0.0.1:{ports['coordinator']}",
                        "FARM_SERVICE_TOKEN": token,
                        **broker_env(broker.settings()),
                    },
                    f"http://127.0.0.1:{ports['web']}/healthz",
                ),
            }
            farm = ProcessFarm(
                web_url=f"http://127.0.0.1:{ports['web']}",
                sim_url=f"http://127.0.0.1:{ports['sim']}",
                coordinator_url=f"http://127.0.0.1:{ports['coordinator']}",
                service_token=token,
                api_key=api_key,
                broker=broker,
                database_url=database_url,
                work=work,
                worker_keys=[(info.id, key) for info, key in keys],
            )
            logs = []
            try:
                for name, (args, env, ready) in commands.items():
                    log_path = work / f"{name}.log"
                    python = []
                    if name == "coordinator" and profile_coordinator is not None:
                        python = ["-m", "cProfile", "-o", str(profile_coordinator)]
                    farm.processes[name] = start_service(
                        args, {**base, **env}, work, log_path, python
                    )
                    await asyncio.to_thread(
                        wait_http, ready, farm.processes[name], log_path, timeout_s=60
                    )
                fleet_spec = {
                    "broker": broker.settings().url,
                    "ollama": farm.sim_url,
                    "concurrency": concurrency,
                    "workers": [[info.id, key] for info, key in keys],
                }
                (work / "fleet.json").write_text(json.dumps(fleet_spec))
                log = (work / "fleet.log").open("wb")
                logs.append(log)
                farm.processes["fleet"] = subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.farm_processes", "fleet", "fleet.json"],
                    env=base,
                    cwd=work,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                async with httpx.AsyncClient(base_url=farm.web_url, timeout=10) as probe:
                    deadline = time.monotonic() + 120
                    while (await probe.get("/api/models")).json()["workers_online"] < workers:
                        if time.monotonic() > deadline:
                            raise TimeoutError("the fleet did not come online")
                        await asyncio.sleep(0.2)
                yield farm
            finally:
                for process in reversed(list(farm.processes.values())):
                    process.send_signal(signal.SIGINT)
                for process in farm.processes.values():
                    try:
                        process.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        process.kill()
                for log in logs:
                    log.close()


async def _fleet(spec_path: str) -> None:
    """Run the fleet described in ``spec_path`` until SIGINT."""
    from farm_runtime.broker import BrokerSettings
    from farm_runtime.lifecycle import run_until_stopped, settle_heap
    from fleet_worker.service import FleetWorker
    from fleet_worker.settings import WorkerSettings

    spec = json.loads(Path(spec_path).read_text())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fleet = {
        worker_id: FleetWorker(
            WorkerSettings(
                broker=BrokerSettings(url=spec["broker"]),
                worker_id=worker_id,
                api_key=SecretStr(key),
                ollama_host=spec["ollama"],
                concurrency=spec["concurrency"],
            ),
            drain_grace_s=1.0,
        )
        for worker_id, key in spec["workers"]
    }
    # As every service does (farm_runtime/lifecycle.py), and once more when the workers
    # are connected: one process hosting a hundred workers makes a heap no single
    # worker's process has, and its full collections stalled every stream at once.
    settle_heap()

    async def settle_when_connected() -> None:
        await asyncio.sleep(10)
        settle_heap()

    settling = asyncio.create_task(settle_when_connected())
    await run_until_stopped({wid: w.run(stop) for wid, w in fleet.items()}, stop)
    settling.cancel()


def main() -> None:
    if sys.argv[1:2] == ["fleet"]:
        import logging

        logging.basicConfig(level=logging.WARNING)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_fleet(sys.argv[2]))


if __name__ == "__main__":
    main()
