"""A trip from the coordinator's event loop to its database thread and back, without the
statement: ``DbRunner.call`` (a queue entry and an asyncio future settled from the
thread) against ``run_in_executor`` on a one-thread pool (what ``DbRunner`` did until
2026-11-30), side by side in one run, on one core. A reply makes about a dozen such
trips. CPU per trip, the process's (both threads) and the event loop's own."""

import asyncio
import functools
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from coordinator.db.database import open_database
from coordinator.db.runner import DbRunner

CALLS = 20_000
ROUNDS = 3


def nothing() -> None:
    return None


async def per_trip(call: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(process CPU, event loop thread CPU) per trip, in µs."""
    for _ in range(1000):  # warm-up: the thread started, the caches warm
        await call()
    process, loop = time.process_time(), time.thread_time()
    for _ in range(CALLS):
        await call()
    return (
        (time.process_time() - process) / CALLS * 1e6,
        (time.thread_time() - loop) / CALLS * 1e6,
    )


async def measure() -> dict[str, list[tuple[float, float]]]:
    runner = DbRunner(open_database("sqlite:///:memory:"))
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db")
    loop = asyncio.get_running_loop()
    designs: dict[str, Callable[[], Awaitable[Any]]] = {
        "run_in_executor (before)": lambda: loop.run_in_executor(
            pool, functools.partial(runner._guarded, nothing)
        ),
        "DbRunner.call": lambda: runner.call(nothing),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in designs}
    try:
        for _ in range(ROUNDS):  # alternated, so that both see the same machine
            for name, call in designs.items():
                results[name].append(await per_trip(call))
    finally:
        runner.close()
        pool.shutdown()
    return results


def main() -> str:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # both threads on one core
    print("\nA trip to the database thread and back, CPU per trip (best of 3 runs)")
    results = asyncio.run(measure())
    lines = [
        "| design | process CPU per trip | of it on the event loop |",
        "|---|---|---|",
    ]
    best = {name: min(runs) for name, runs in results.items()}
    for name, (process, loop) in best.items():
        lines.append(f"| {name} | {process:.1f} µs | {loop:.1f} µs |")
    before, after = best["run_in_executor (before)"][0], best["DbRunner.call"][0]
    lines.append(f"\nDbRunner.call costs {after / before:.2f}x the CPU of run_in_executor.")
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
