"""Bursts: N OpenAI-API requests at once on one worker with 4 slots, the farm one process
per service (benchmarks/farm_processes.py). A refused client comes back when its
Retry-After says, until it is served. Measured: how long a refusal took to arrive, how
long a request waited from its first try to its reply, how often it was refused, and the
fleet's utilisation over the burst (slot-seconds busy over slot-seconds available,
from the jobs' own times in the database), which admission by expected wait must keep
full: the queue holds what the fleet can start before the queue deadline, and the
refused come back in time to refill it.

The queue deadline is 20 s here (120 s by default), so that a burst of 3,000 drains in
minutes, not an hour; the admission horizon is 75 % of it either way."""

import asyncio
import sqlite3
import statistics
import time
from dataclasses import dataclass, field

import httpx

from benchmarks.clients import client_pools
from benchmarks.farm_processes import ProcessFarm, process_farm

SLOTS = 4
SIM = {"FARM_SIM_TTFT_MS": "50", "FARM_SIM_TOKENS_PER_S": "200", "FARM_SIM_REPLY_TOKENS": "40"}
COORDINATOR = {"FARM_QUEUE_TIMEOUT_S": "20", "FARM_MAX_QUEUED": "1000000"}
SIZES = (300, 1000, 3000)
GIVE_UP_S = 600.0


@dataclass
class Outcome:
    refusals: list[float] = field(default_factory=list)  # seconds each refusal took
    waited_s: float | None = None  # first try to the reply, if served
    other: str | None = None  # anything else that went wrong


async def ask(http: httpx.AsyncClient, farm: ProcessFarm, n: int) -> Outcome:
    outcome, started = Outcome(), time.perf_counter()
    body = {"model": "llama3", "messages": [{"role": "user", "content": f"question {n}"}]}
    headers = {"Authorization": f"Bearer {farm.api_key}"}
    while time.perf_counter() - started < GIVE_UP_S:
        sent = time.perf_counter()
        try:
            response = await http.post("/v1/chat/completions", json=body, headers=headers)
        except httpx.HTTPError as exc:
            outcome.other = type(exc).__name__
            return outcome
        if response.status_code == 200:
            outcome.waited_s = time.perf_counter() - started
            return outcome
        if response.status_code != 503 or "Retry-After" not in response.headers:
            outcome.other = f"{response.status_code}: {response.text[:100]}"
            return outcome
        outcome.refusals.append(time.perf_counter() - sent)
        await asyncio.sleep(float(response.headers["Retry-After"]))
    outcome.other = "gave up"
    return outcome


def utilisation(database_url: str, since: float) -> float:
    """Busy slot-seconds over available ones, from the first assignment to the last end."""
    with sqlite3.connect(database_url.removeprefix("sqlite:///")) as db:
        rows = db.execute(
            "SELECT assigned_at, finished_at FROM job WHERE state = 'succeeded'"
            " AND created_at >= ?",
            (since,),
        ).fetchall()
    busy = sum(end - start for start, end in rows)
    window = max(end for _, end in rows) - min(start for start, _ in rows)
    return float(busy / (SLOTS * window))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


async def burst(farm: ProcessFarm, size: int) -> dict[str, object]:
    since = time.time()
    async with client_pools(farm.web_url, min(size, 1000)) as pools:
        outcomes = await asyncio.gather(*(ask(pools[n % len(pools)], farm, n) for n in range(size)))
    served = [o.waited_s for o in outcomes if o.waited_s is not None]
    refusals = [r for o in outcomes for r in o.refusals]
    return {
        "size": size,
        "served": len(served),
        "first try": sum(1 for o in outcomes if o.waited_s is not None and not o.refusals),
        "other": sum(1 for o in outcomes if o.other),
        "refusals": len(refusals),
        "most refusals": max((len(o.refusals) for o in outcomes), default=0),
        "refusal p50 ms": 1000 * pct(refusals, 0.5),
        "refusal p99 ms": 1000 * pct(refusals, 0.99),
        "wait p50 s": statistics.median(served) if served else float("nan"),
        "wait p99 s": pct(served, 0.99),
        "utilisation": utilisation(farm.database_url, since),
    }


async def run() -> list[dict[str, object]]:
    results = []
    for size in SIZES:
        async with process_farm(
            "mosquitto", workers=1, concurrency=SLOTS, sim=SIM, coordinator=COORDINATOR
        ) as farm:
            results.append(await burst(farm, size))
            print(results[-1], flush=True)
    return results


def main() -> str:
    rows = asyncio.run(run())
    lines = [
        "| burst | served | at first try | failed otherwise | refusals | most for one"
        " | refusal answered p50 / p99 | served waited p50 / p99 | utilisation |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['served']} | {r['first try']} | {r['other']} | {r['refusals']}"
            f" | {r['most refusals']} | {r['refusal p50 ms']:.0f} / {r['refusal p99 ms']:.0f} ms"
            f" | {r['wait p50 s']:.1f} / {r['wait p99 s']:.1f} s | {r['utilisation']:.0%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
