"""Run the benchmarks, print their figures, and rewrite their tables in
docs/PERFORMANCE.md (each between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``,
with the machine, the command and the date).

``python -m benchmarks [NAME ...] [--no-write]``; NAME is one of SECTIONS (all by
default). ``make bench`` runs them all."""

import argparse
import os
import platform
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import (
    broker_floor,
    burst,
    capacity,
    chunking,
    claims,
    db_hop,
    fleet,
    flood,
    gc_pauses,
    job_path,
    latency,
    outbox,
    page_render,
    stack_floor,
    streams,
    throughput,
)

SECTIONS: dict[str, Callable[[], str]] = {
    "latency": latency.main,
    "throughput": throughput.main,
    "job_path": job_path.main,
    "db_hop": db_hop.main,
    "streams": streams.main,
    "outbox": outbox.main,
    "gc_pauses": gc_pauses.main,
    "fleet": fleet.main,
    "claims": claims.main,
    "chunking": chunking.main,
    "burst": burst.main,
    "flood": flood.main,
    "capacity": capacity.main,
    "broker_floor": broker_floor.main,
    "stack_floor": stack_floor.main,
    "page_render": page_render.main,
}
DOC = Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = ""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    mosquitto = subprocess.run(
        ["mosquitto", "-h"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    broker = mosquitto[0].strip() if mosquitto else "mosquitto (not found)"
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}; Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {broker}"
    )


def write(name: str, table: str, command: str) -> None:
    if name in ("claims", "job_path", "capacity") and os.environ.get("FARM_TEST_POSTGRES_URL"):
        command = f"FARM_TEST_POSTGRES_URL=... {command}"
    text = DOC.read_text()
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n`{command}` on {time.strftime('%Y-%m-%d')}, {machine()}.\n\n{table}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"docs/PERFORMANCE.md has no {start} ... {end} section")
    DOC.write_text(pattern.sub(lambda _: block, text))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("names", nargs="*", choices=[[], *SECTIONS], default=[])
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    names = args.names or list(SECTIONS)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}: {machine()}")
    for name in names:
        table = SECTIONS[name]()
        if not args.no_write:
            write(name, table, f"python -m benchmarks {name}" if args.names else "make bench")
    if not args.no_write:
        print(f"\nwrote {', '.join(names)} into {DOC}")


if __name__ == "__main__":
    main()
