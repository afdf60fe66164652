"""Concurrent streams: how many 30-token/s replies the farm sustains at once with the
added per-chunk delay at p99 under 100 ms. One farm, one process per service, on
Mosquitto, 100 workers with 4 slots. At each level N, N clients stream OpenAI-API
replies back to back (90 tokens, 3 s each), their first starts spread over one reply's
length, so that about N streams run at every moment; the replies started in a window of
steady state (after one reply's length, for WINDOW_S) are measured. Then N clients do the
same straight from the simulator, as the baseline (the simulator itself slows down under
load).

A piece's delay is its arrival, counted from the stream's first piece, minus when the
simulator's schedule (1/30 s per token) says its last token was due. Added delay = the
farm's delay minus the direct one at the same percentile.

Until 2026-11-29 the N requests of a level all started at the same moment and were
measured once: the start of N jobs at once (N requests through the webapp and the
coordinator, N assignments, N requests to the simulator, all in a few milliseconds)
delayed the chunks of the streams already running, and the p99 of one such burst moved
by hundreds of milliseconds from one run to the next (-5 to 819 ms added at 75 streams,
three runs in a row)."""

import asyncio
import bisect
import itertools
import json
import ssl
import time
from collections.abc import Awaitable, Callable

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
STREAM_S = TOKENS / TPS
WINDOW_S = 9.0  # measured: the streams started in this window of steady state
LEVELS = (25, 50, 75, 100, 150, 200, 300)

Pieces = list[tuple[float, str]]  # (arrival, text) of each piece of a reply


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


async def farm_stream(http: httpx.AsyncClient, key: str) -> Pieces:
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


async def direct_stream(client: ollama.AsyncClient) -> Pieces:
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


async def steady(
    n: int, one_stream: Callable[[int], Awaitable[Pieces]], window: Callable[[], None]
) -> tuple[list[Pieces], int]:
    """N clients streaming back to back, their first starts spread over one stream's
    length. Returns the streams started within the window of steady state, and how many
    streams failed. ``window`` is called as the window opens and as it closes."""
    start = time.perf_counter()
    opens, closes = start + STREAM_S, start + STREAM_S + WINDOW_S
    kept: list[Pieces] = []
    failed = 0

    async def client(i: int) -> None:
        nonlocal failed
        await asyncio.sleep(i * STREAM_S / n)
        while (began := time.perf_counter()) < closes:
            try:
                pieces = await one_stream(i)
            except (httpx.HTTPError, ollama.ResponseError):
                failed += 1
                await asyncio.sleep(0.1)
                continue
            if began >= opens:
                kept.append(pieces)

    async def edges() -> None:
        for edge in (opens, closes):
            await asyncio.sleep(max(0.0, edge - time.perf_counter()))
            window()

    await asyncio.gather(edges(), *(client(i) for i in range(n)))
    return kept, failed


async def level(farm: ProcessFarm, n: int) -> dict[str, float]:
    marks: list[tuple[float, dict[str, float], float]] = []

    def window() -> None:
        marks.append(
            (
                time.perf_counter(),
                {name: cpu_seconds(farm.pid(name)) for name in farm.processes},
                time.process_time(),
            )
        )

    async with client_pools(farm.web_url, n) as pools:
        through_farm, failed = await steady(
            n, lambda i: farm_stream(pools[i], farm.api_key), window
        )
    (t0, before, client_before), (t1, after, client_after) = marks
    cpu = {name: (after[name] - before[name]) / (t1 - t0) for name in before}
    cpu["client"] = (client_after - client_before) / (t1 - t0)
    via_farm = [d for r in through_farm for d in delays(r)]
    tls = ssl.create_default_context()  # one client each, as for the farm (benchmarks.clients)
    clients = [ollama.AsyncClient(host=farm.sim_url, timeout=60, verify=tls) for _ in range(n)]
    direct, _ = await steady(n, lambda i: direct_stream(clients[i]), lambda: None)
    for client in clients:
        await client.close()  # type: ignore[no-untyped-call]
    straight = [d for r in direct for d in delays(r)]
    return {
        "n": n,
        "completed": len(through_farm),
        "failed": failed,
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
        "| streams at once | measured (failed) | chunk delay p50 | p99 | direct p99 | added p99 "
        "| CPU: coordinator | webapp | fleet | simulator | load generator |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:.0f} | {r['completed']:.0f} ({r['failed']:.0f}) "
            f"| {r['farm_p50'] * ms:.0f} ms "
            f"| {r['farm_p99'] * ms:.0f} ms | {r['direct_p99'] * ms:.0f} ms "
            f"| {r['added_p99'] * ms:.0f} ms | {r['cpu_coordinator']:.0%} | {r['cpu_webapp']:.0%} "
            f"| {r['cpu_fleet']:.0%} | {r['cpu_sim']:.0%} | {r['cpu_client']:.0%} |"
        )
    table = "\n".join(lines)
    print(
        f"\nConcurrent streams at {TPS:.0f} tokens/s ({TOKENS} tokens) back to back, "
        f"{WINDOW_S:.0f} s of steady state, Mosquitto, 100 workers"
    )
    print(table)
    return table


if __name__ == "__main__":
    main()
