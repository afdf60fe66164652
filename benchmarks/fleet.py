"""Fleet size: a coordinator process with 1,000 workers connected to Mosquitto and
heartbeating every 2 s (the default): its CPU and memory at idle (no jobs), and the time
it takes to notice a dead worker, two ways:

* killed: the worker's process is SIGKILLed; its socket closes, Mosquitto publishes its
  Last Will, and the coordinator marks it offline;
* hung: the worker stays connected but goes silent; only the heartbeat grace period
  (``FARM_WORKER_GRACE_S``, 10 s) can tell.

"Noticed" is when the coordinator's chat API stops counting the worker as online."""

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.farm_processes import cpu_seconds
from benchmarks.presence import PresenceWorker
from coordinator.db.database import migrate, open_database
from coordinator.db.tables import Worker
from farm_protocol.chat import SESSION_HEADER
from llama_farm.ports import free_port
from tests.support.brokers import broker_of
from tests.support.processes import broker_env, start_service

WORKERS = int(os.environ.get("FLEET_WORKERS", "1000"))
IDLE_S = 30.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def online(client: httpx.AsyncClient) -> int:
    response = await client.get("/models")
    count: int = response.json()["workers_online"]
    return count


async def until(client: httpx.AsyncClient, count: int, timeout_s: float) -> float:
    start = time.perf_counter()
    while (now := await online(client)) != count:
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError(f"workers online never reached {count} (at {now})")
        await asyncio.sleep(0.05)
    return time.perf_counter() - start


async def measure() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        database_url = f"sqlite:///{Path(tmp) / 'fleet.sqlite3'}"
        db = open_database(database_url)
        migrate(db)
        with db.atomic():
            for i in range(WORKERS + 1):
                Worker.create(id=f"w{i}", name=f"w{i}", key_hash="x")
        db.close()
        async with broker_of("mosquitto") as broker:
            settings = broker.settings()
            token = secrets.token_urlsafe(16)
            port = free_port()
            password = settings.password.get_secret_value() if settings.password else ""
            env = dict(
                os.environ,
                **broker_env(settings),
                FARM_DATABASE_URL=database_url,
                FARM_HTTP_PORT=str(port),
                FARM_SERVICE_TOKEN=token,
            )
            coordinator = start_service(
                ["coordinator"], env, Path(tmp), Path(tmp) / "coordinator.log"
            )
            api = httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}/api/v1/chat",
                headers={
                    "Authorization": f"Bearer {token}",
                    SESSION_HEADER: secrets.token_urlsafe(32),
                },
                timeout=10,
            )
            tasks: list[asyncio.Task[None]] = []
            victim = None
            try:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        await online(api)
                        break
                    except httpx.HTTPError:
                        assert time.monotonic() < deadline, "the coordinator did not start"
                        await asyncio.sleep(0.1)
                fleet = [PresenceWorker(settings, f"w{i}") for i in range(WORKERS)]
                for start in range(0, WORKERS, 50):  # connect in batches
                    ready = [asyncio.Event() for _ in fleet[start : start + 50]]
                    for worker, event in zip(fleet[start : start + 50], ready, strict=True):
                        tasks.append(asyncio.create_task(worker.run(event)))
                    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 30)
                victim = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.presence",
                        settings.url,
                        settings.username or "",
                        password,
                        f"w{WORKERS}",
                    ]
                )
                await until(api, WORKERS + 1, 60)
                await asyncio.sleep(5)  # settle

                before, wall = cpu_seconds(coordinator.pid), time.perf_counter()
                await asyncio.sleep(IDLE_S)
                cpu = (cpu_seconds(coordinator.pid) - before) / (time.perf_counter() - wall)
                rss = rss_mib(coordinator.pid)
                assert await online(api) == WORKERS + 1

                victim.send_signal(signal.SIGKILL)
                killed = await until(api, WORKERS, 60)
                fleet[0].beating = False
                hung = await until(api, WORKERS - 1, 60)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if victim is not None and victim.poll() is None:
                    victim.kill()
                coordinator.send_signal(signal.SIGTERM)
                coordinator.wait(timeout=30)
                await api.aclose()
    return {"cpu": cpu, "rss": rss, "killed": killed, "hung": hung}


def main() -> str:
    figures = asyncio.run(measure())
    out = "\n".join(
        [
            "| workers heartbeating every 2 s | coordinator CPU at idle | coordinator RSS "
            "| dead worker noticed: killed (Last Will) | dead worker noticed: hung (grace 10 s) |",
            "|---|---|---|---|---|",
            f"| {WORKERS:,} | {figures['cpu'] * 100:.1f}% of one core | {figures['rss']:.0f} MiB "
            f"| {figures['killed']:.2f} s | {figures['hung']:.1f} s |",
        ]
    )
    print(f"\nFleet size: {WORKERS} workers, idle over {IDLE_S:.0f} s")
    print(out)
    print(json.dumps(figures))
    return out


if __name__ == "__main__":
    main()
