"""Throughput: completed short jobs per second with 1, 10 and 100 workers (4 slots each,
the simulator answering 5 tokens at once), on Mosquitto, the farm one process per service
(benchmarks/farm_processes.py). Clients are non-streaming OpenAI-API requests through the
webapp, twice as many at once as there are slots, at most 400 (so at 100 workers they
only fill the slots). Also where the CPU goes at saturation: each process's share over the run, and
the coordinator's hottest functions (cProfile of its event-loop thread, 100 workers, in a
run of its own: the profiler slows the coordinator)."""

import asyncio
import io
import pstats
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.clients import client_pools
from benchmarks.farm_processes import REPO, ProcessFarm, cpu_seconds, process_farm

SIM = {"FARM_SIM_TTFT_MS": "0", "FARM_SIM_TOKENS_PER_S": "0", "FARM_SIM_REPLY_TOKENS": "5"}
SLOTS = 4
WARM_S = 3.0
RUN_S = 15.0


async def load(farm: ProcessFarm, clients: int, seconds: float) -> tuple[int, Counter[str]]:
    """(completed, what went wrong how often) over ``seconds`` with ``clients`` at once."""
    done = 0
    failed: Counter[str] = Counter()
    body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {farm.api_key}"}

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            try:
                response = await http.post("/v1/chat/completions", json=body, headers=headers)
                problem = None if response.status_code == 200 else str(response.status_code)
            except httpx.HTTPError as exc:  # a dropped connection counts as a failure
                problem = type(exc).__name__
            if problem is None:
                done += 1
            else:
                failed[problem] += 1
                await asyncio.sleep(0.05)

    async with client_pools(farm.web_url, clients) as pools:
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(client(http) for http in pools))
    return done, failed


async def measure(workers: int) -> dict[str, object]:
    clients = min(400, 2 * workers * SLOTS)
    async with process_farm("mosquitto", workers=workers, concurrency=SLOTS, sim=SIM) as farm:
        await load(farm, clients, WARM_S)
        pids = {name: farm.pid(name) for name in farm.processes}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        client_before = time.process_time()
        start = time.perf_counter()
        done, failed = await load(farm, clients, RUN_S)
        wall = time.perf_counter() - start
        cpu = {name: (cpu_seconds(pid) - before[name]) / wall for name, pid in pids.items()}
        cpu["load generator"] = (time.process_time() - client_before) / wall
    return {
        "workers": workers,
        "clients": clients,
        "rate": done / wall,
        "failed": failed,
        "cpu": cpu,
    }


async def profile(workers: int, path: Path) -> None:
    """A separate saturated run with the coordinator under cProfile (which slows it: the
    rates above are measured without it)."""
    clients = min(400, 2 * workers * SLOTS)
    async with process_farm(
        "mosquitto", workers=workers, concurrency=SLOTS, sim=SIM, profile_coordinator=path
    ) as farm:
        await load(farm, clients, RUN_S)


def hottest(profile: Path, limit: int = 12) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(profile), stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    return "\n".join(short_paths(line) for line in lines[start : start + limit + 1])


_PREFIX = re.compile(r"\S*/(?:site-packages|lib/python3\.\d+)/|" + re.escape(str(REPO)) + "/")


def short_paths(line: str) -> str:
    """A profile line without this machine's directories: ``asyncio/events.py``,
    ``paho/mqtt/client.py``, ``coordinator/...``."""
    return _PREFIX.sub("", line)


def main() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        profile_path = Path(tmp) / "coordinator.prof"
        results = [asyncio.run(measure(n)) for n in (1, 10, 100)]
        asyncio.run(profile(100, profile_path))
        hot = hottest(profile_path) if profile_path.exists() else "(no profile)"
    lines = [
        "| workers (4 slots each) | clients at once | completed jobs/s | refused or failed "
        "| CPU: coordinator | webapp | fleet | simulator | load generator |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cpu = r["cpu"]
        assert isinstance(cpu, dict)
        failed = r["failed"]
        assert isinstance(failed, Counter)
        why = ", ".join(f"{n} {kind}" for kind, n in failed.most_common())
        lines.append(
            f"| {r['workers']} | {r['clients']} | {r['rate']:.0f} | {why or 0} "
            f"| {cpu['coordinator']:.0%} | {cpu['webapp']:.0%} | {cpu['fleet']:.0%} "
            f"| {cpu['sim']:.0%} | {cpu['load generator']:.0%} |"
        )
    table = "\n".join(lines)
    print(f"\nThroughput: short jobs (5 tokens, no delay), {RUN_S:.0f} s per row, Mosquitto")
    print(table)
    print("\nCoordinator's event-loop thread at saturation (100 workers), by own time:")
    print(hot)
    return table + "\n\n```\n" + hot + "\n```"


if __name__ == "__main__":
    main()
