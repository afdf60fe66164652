"""Concurrent streams: how many 30-token/s replies the farm carries at once with the
added per-chunk delay at p99 under 100 ms. One farm, one process per service, on
Mosquitto, 100 workers with 4 slots; at each level N, N streaming OpenAI-API requests
start together (90 tokens, 3 s each), and N streams straight from the simulator run the
same way right after, as the baseline (the simulator itself slows down under load).

A piece's delay is its arrival, counted from the stream's first piece, minus when the
simulator's schedule (1/30 s per token) says its last token was due. Added delay = the
farm's delay minus the direct one at the same percentile."""

import asyncio
import bisect
import itertools
import json
import ssl
import time

import httpx
import ollama

from benchmarks.clients import client_pools
from benchmarks.farm_processes import ProcessFarm, cpu_seconds, process_farm
from llama_farm.ollama_sim.replies import tokenize

TPS = 30.0
TOKENS = 90
SIM = {
    "FARM_SIM_TTFT_MS": "20",
    "FARM_SIM_TOKENS_PER_S": str(TPS),
    "FARM_SIM_REPLY_TOKENS": str(TOKENS),
}
LEVELS = (25, 50, 75, 100, 200, 300)


def delays(pieces: list[tuple[float, str]]) -> list[float]:
    if len(pieces) < 2:
        return []
    text = "".join(piece for _, piece in pieces)
    ends = list(itertools.accumulate(len(t) for t in tokenize(text)))
    first, seen, out = pieces[0][0], len(pieces[0][1]), []
    for at, piece in pieces[1:]:
        seen += len(piece)
        last = bisect.bisect_right(ends, seen) - 1
        out.append((at - first) - last / TPS)
    return out


async def farm_stream(http: httpx.AsyncClient, key: str) -> list[tuple[float, str]]:
    body = {"model": "llama3", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    pieces = []
    async with http.stream(
        "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                if delta:
                    pieces.append((time.perf_counter(), delta))
    return pieces


async def direct_stream(client: ollama.AsyncClient) -> list[tuple[float, str]]:
    pieces = []
    stream = await client.chat(
        model="llama3", messages=[{"role": "user", "content": "go"}], stream=True
    )
    async for part in stream:
        if part.message.content:
            pieces.append((time.perf_counter(), part.message.content))
    return pieces


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else 0


async def level(farm: ProcessFarm, n: int) -> dict[str, float]:
    async with client_pools(farm.web_url, n) as pools:
        before = {name: cpu_seconds(farm.pid(name)) for name in farm.processes}
        client_before = time.process_time()
        started = time.perf_counter()
        results = await asyncio.gather(
            *(farm_stream(http, farm.api_key) for http in pools), return_exceptions=True
        )
        wall = time.perf_counter() - started
        cpu = {name: (cpu_seconds(farm.pid(name)) - before[name]) / wall for name in farm.processes}
        cpu["client"] = (time.process_time() - client_before) / wall
    ok = [r for r in results if isinstance(r, list)]
    via_farm = [d for r in ok for d in delays(r)]
    tls = ssl.create_default_context()  # one client each, as for the farm (benchmarks.clients)
    clients = [ollama.AsyncClient(host=farm.sim_url, timeout=60, verify=tls) for _ in range(n)]
    direct = await asyncio.gather(*(direct_stream(client) for client in clients))
    for client in clients:
        await client.close()  # type: ignore[no-untyped-call]
    straight = [d for r in direct for d in delays(r)]
    return {
        "n": n,
        "completed": len(ok),
        "farm_p50": pct(via_farm, 50),
        "farm_p99": pct(via_farm, 99),
        "direct_p99": pct(straight, 99),
        "added_p99": pct(via_farm, 99) - pct(straight, 99),
        **{f"cpu_{name}": share for name, share in cpu.items()},
    }


async def measure() -> list[dict[str, float]]:
    rows = []
    async with process_farm("mosquitto", workers=100, concurrency=4, sim=SIM) as farm:
        await level(farm, 10)  # warm up
        for n in LEVELS:
            rows.append(await level(farm, n))
    return rows


def main() -> str:
    rows = asyncio.run(measure())
    ms = 1000.0
    lines = [
        "| streams at once | completed | chunk delay p50 | p99 | direct p99 | added p99 "
        "| CPU: coordinator | webapp | fleet | simulator | load generator |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:.0f} | {r['completed']:.0f} | {r['farm_p50'] * ms:.0f} ms "
            f"| {r['farm_p99'] * ms:.0f} ms | {r['direct_p99'] * ms:.0f} ms "
            f"| {r['added_p99'] * ms:.0f} ms | {r['cpu_coordinator']:.0%} | {r['cpu_webapp']:.0%} "
            f"| {r['cpu_fleet']:.0%} | {r['cpu_sim']:.0%} | {r['cpu_client']:.0%} |"
        )
    table = "\n".join(lines)
    print(f"\nConcurrent streams at {TPS:.0f} tokens/s ({TOKENS} tokens), Mosquitto, 100 workers")
    print(table)
    return table


if __name__ == "__main__":
    main()
