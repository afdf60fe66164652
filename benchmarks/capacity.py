"""How many concurrent streams the server side carries on one core, measured apart from
its load, for the design before issue 18 and this one, side by side in one run.

* **Server core (CPU 0)**: Mosquitto, the coordinator(s) and the webapp(s), each pinned
  to it (its affinity set before it starts its threads). The database is SQLite in the
  coordinator's process, or with two coordinators PostgreSQL when
  ``FARM_TEST_POSTGRES_URL`` is set (its server is not ours to pin: its CPU is left out).
* **Load core (CPU 1)**: the synthetic fleet (``benchmarks/synthetic_fleet.py``: 50
  workers with their own credentials, replaying 90-token replies at 30 tokens/s under the
  chunk rule) and the synthetic browsers (this process: one websocket reader each,
  watching its thread, sending its next message when the last reply ends). Each browser
  starts at a random moment within one reply's time, so that replies begin and end
  spread out, as a site's users' do (started together, every reply of a level began in
  the same instant, and the added delay measured that burst).
* **Before**: a ``git worktree`` of the commit before issue 18 (``BASELINE``), its own
  coordinator and webapp, the fleet speaking its protocol. **After**: this tree.

Concurrent streams go up level by level; at each, after a warm-up, a window measures the
added delay of every chunk (from the fleet's publish to the browser's receipt: the
fleet writes the publish time into the text), each process's CPU, and the chunks and
replies completed. A level is carried when its chunks arrive at 90% of the streams'
rate or more (the server side neither slowed the replies nor left requests waiting)
with p99 added delay under 100 ms; a design's capacity is the most streams carried.
Before the first level, a window with the fleet online and no stream measures what each
process spends idle (heartbeats, health checks, timers): a coordinator's CPU per reply
is given in all, and beyond that idle cost.
``python -m benchmarks capacity``. Side by side, one coordinator and one webapp each, the
design after: ``python -m benchmarks.capacity --compare COMMIT`` (this tree against
COMMIT, from a worktree) and ``--watchers 1,4`` (this tree with one and with four
websockets watching each thread)."""

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from benchmarks.farm_processes import cpu_seconds
from llama_farm.ports import free_port
from tests.support.brokers import RunningBroker, broker_of
from tests.support.farm import service_accounts
from tests.support.processes import broker_env, wait_http

REPO = Path(__file__).resolve().parents[1]
BASELINE = "73d7021"  # the last commit before issue 18 (every chunk to every process)
SERVER_CPUS = {0}
LOAD_CPUS = {1}
LEVELS = [10, 25, 50, 75, 100, 150, 200, 300, 400, 600, 800, 1000, 1400]
WORKERS, SLOTS = 50, 30
TOKENS, TOKENS_PER_S = 90, 30.0
WARMUP_S, WINDOW_S = 4.0, 10.0
TARGET_P99_S = 0.100
# A stream's chunks a second under the chunk rule: the first token alone, then two a chunk.
CHUNKS_PER_S = (1 + (TOKENS - 1 + 1) // 2) / (TOKENS / TOKENS_PER_S)
CARRIED = 0.9  # a level is carried when its chunks arrive at least this close to the rate


def baseline_tree() -> Path:
    """A worktree of BASELINE (made once, under .farm/, which git ignores)."""
    return worktree(BASELINE, "baseline")


def worktree(commit: str, name: str) -> Path:
    """A worktree of ``commit`` under .farm/NAME (made once)."""
    path = REPO / ".farm" / name
    if not (path / "coordinator").exists():
        path.parent.mkdir(exist_ok=True)
        subprocess.run(
            ["git", "worktree", "add", "--force", "--detach", str(path), commit],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
    return path


def pin_all(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


@dataclass
class Servers:
    coordinators: list[str]  # URLs
    webapps: list[str]
    admin_token: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    broker_pid: int = 0

    def pids(self) -> dict[str, int]:
        return {"mosquitto": self.broker_pid} | {n: p.pid for n, p in self.processes.items()}


def _spawn(tree: Path, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``llama-farm ARGS`` from ``tree``, on the server core. With CAPACITY_PROFILE=DIR,
    under cProfile, its profile written to DIR/<log name>.prof when it stops."""
    profile = os.environ.get("CAPACITY_PROFILE")
    python = ["-m", "cProfile", "-o", f"{profile}/{log.stem}.prof"] if profile else []
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *python, "-m", "llama_farm.cli", *args],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, SERVER_CPUS),
        )


def _database(work: Path, name: str, shared: bool) -> str:
    base = os.environ.get("FARM_TEST_POSTGRES_URL")
    if not (shared and base):
        return f"sqlite:///{work / (name + '.sqlite3')}"
    import psycopg2  # type: ignore[import-untyped]

    db = f"farm_capacity_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(base)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {db}")
    conn.close()
    return base.rsplit("/", 1)[0] + "/" + db


@asynccontextmanager
async def servers(
    design: str, tree: Path, broker: RunningBroker, work: Path, count: int
) -> AsyncIterator[Servers]:
    token, admin = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    accounts = await service_accounts(broker) if design == "after" else {}
    database = _database(work, design, shared=count > 1)
    ports = [free_port() for _ in range(count)]
    found = Servers([f"http://127.0.0.1:{p}" for p in ports], [], admin)
    assert broker.pid is not None
    found.broker_pid = broker.pid()
    try:
        for n, port in enumerate(ports):
            env = {
                **broker_env(accounts.get("farm-coordinator", broker.settings())),
                "FARM_DATABASE_URL": database,
                "FARM_HTTP_PORT": str(port),
                "FARM_SERVICE_TOKEN": token,
                "FARM_ADMIN_TOKEN": admin,
                "FARM_COORDINATOR_CLIENT_ID": f"capacity-{design}-{n}",
                "FARM_MAX_QUEUED": "1000000",
                "FARM_RATE_SEND_PER_MINUTE": "1000000",
                "FARM_RATE_THREAD_PER_MINUTE": "1000000",
                "FARM_RATE_NEW_USER_PER_MINUTE": "1000000",
                "FARM_LOG_LEVEL": "WARNING",
            }
            log = work / f"{design}-coordinator-{n}.log"
            process = found.processes[f"coordinator {n + 1}"] = _spawn(
                tree, ["coordinator"], env, log
            )
            await asyncio.to_thread(
                wait_http, f"http://127.0.0.1:{port}/metrics", process, log, timeout_s=60
            )
        for n in range(count):
            port = free_port()
            # before, a webapp knew one coordinator; after, every one
            known = found.coordinators if design == "after" else [found.coordinators[n]]
            env = {
                **broker_env(accounts.get("farm-webapp", broker.settings())),
                "FARM_WEB_PORT": str(port),
                "FARM_COORDINATOR_URL": ",".join(known),
                "FARM_SERVICE_TOKEN": token,
                "FARM_LOG_LEVEL": "WARNING",
            }
            log = work / f"{design}-webapp-{n}.log"
            process = found.processes[f"webapp {n + 1}"] = _spawn(tree, ["webapp"], env, log)
            url = f"http://127.0.0.1:{port}"
            await asyncio.to_thread(wait_http, url + "/healthz", process, log, timeout_s=60)
            found.webapps.append(url)
        yield found
    finally:
        for process in found.processes.values():
            process.send_signal(signal.SIGINT)
        for process in found.processes.values():
            try:
                await asyncio.to_thread(process.wait, 20)
            except subprocess.TimeoutExpired:
                process.kill()


@asynccontextmanager
async def fleet(
    design: str, farm: Servers, broker: RunningBroker, work: Path
) -> AsyncIterator[subprocess.Popen[bytes]]:
    headers = {"Authorization": f"Bearer {farm.admin_token}"}
    workers = []
    async with httpx.AsyncClient(base_url=farm.coordinators[0], headers=headers) as admin:
        for i in range(WORKERS):
            made = (await admin.post("/api/v1/admin/workers", json={"name": f"synth {i}"})).json()
            workers.append([made["worker"]["id"], made["api_key"]])
            await broker.add_client(made["worker"]["id"], made["api_key"])
    spec = {
        "protocol": "old" if design == "before" else "new",
        "broker": broker.settings().url,
        "workers": workers,
        "slots": SLOTS,
        "reply_tokens": TOKENS,
        "tokens_per_s": TOKENS_PER_S,
    }
    path = work / f"{design}-fleet.json"
    path.write_text(json.dumps(spec))
    with (work / f"{design}-fleet.log").open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.synthetic_fleet", str(path)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, LOAD_CPUS),
        )
    try:
        async with httpx.AsyncClient(base_url=farm.webapps[0], timeout=10) as probe:
            deadline = time.monotonic() + 60
            while (await probe.get("/api/models")).json().get("workers_online", 0) < WORKERS:
                if time.monotonic() > deadline:
                    raise TimeoutError("the synthetic fleet did not come online")
                await asyncio.sleep(0.2)
        yield process
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.to_thread(process.wait, 20)


@dataclass
class Seen:
    delays: list[tuple[float, float]] = field(default_factory=list)  # (when, delay)
    replies: list[float] = field(default_factory=list)  # when each reply ended
    failures: int = 0


async def browser(
    web_url: str, seen: Seen, stop: asyncio.Event, start_s: float, watchers: int = 1
) -> None:
    """One synthetic browser, from ``start_s`` on: its thread, its websocket (read all the
    time, as a page does), one message after another. With ``watchers`` over 1, as many
    websockets watch the thread (more tabs, or people reading along), each a reader whose
    chunks count."""
    ended: dict[str, asyncio.Event] = {}
    await asyncio.sleep(start_s)

    async def read(ws: aiohttp.ClientWebSocketResponse, sender: bool = True) -> None:
        async for message in ws:
            now = time.time()
            data = json.loads(message.data)
            for event in data if isinstance(data, list) else [data]:
                if event["type"] == "chunk":
                    seen.delays.append((now, now - float(event["text"].split(" ", 1)[0])))
                elif sender and event["type"] == "message" and _final(event["message"]):
                    reply = event["message"]
                    if reply["role"] == "assistant":
                        seen.replies.append(now)
                        seen.failures += reply["state"] != "done"
                        ended.setdefault(reply["message_id"], asyncio.Event()).set()
        raise ConnectionError("the websocket closed")

    # a browser keeps its session cookie (aiohttp keeps none from an IP address unless
    # told to): one identity per browser, not a new user, and a new member of the
    # thread, with every message
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base_url=web_url, cookie_jar=jar) as http:
        made = await http.post("/api/threads", json={"system_prompt": ""})
        thread_id = (await made.json())["thread_id"]
        async with contextlib.AsyncExitStack() as sockets:
            others = []
            for _ in range(watchers - 1):
                other = await sockets.enter_async_context(
                    http.ws_connect(f"/ws/threads/{thread_id}", max_msg_size=0)
                )
                await other.receive()  # the snapshot
                others.append(asyncio.create_task(read(other, sender=False)))
            sockets.callback(lambda: [task.cancel() for task in others])
            ws = await sockets.enter_async_context(
                http.ws_connect(f"/ws/threads/{thread_id}", max_msg_size=0)
            )
            await ws.receive()  # the snapshot
            reader = asyncio.create_task(read(ws))
            try:
                while not stop.is_set():
                    sent = await http.post(
                        f"/api/threads/{thread_id}/messages", json={"text": "go"}
                    )
                    if sent.status != 201:
                        seen.failures += 1
                        await asyncio.sleep(1.0)
                        continue
                    reply = (await sent.json())["reply"]["message_id"]
                    done = ended.setdefault(reply, asyncio.Event())
                    waiting = asyncio.create_task(done.wait())
                    try:
                        await asyncio.wait({waiting, reader}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiting.cancel()
                    if reader.done():
                        await reader  # raises why it stopped
                    ended.pop(reply, None)
            finally:
                reader.cancel()


def _final(message: dict[str, Any]) -> bool:
    return message["state"] not in ("queued", "generating")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def levels(
    farm: Servers, fleet_pid: int, streams: list[int] | None = None, watchers: int = 1
) -> list[dict[str, Any]]:
    seen, stop = Seen(), asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    rows: list[dict[str, Any]] = []
    pids = farm.pids() | {"fleet": fleet_pid, "browsers": os.getpid()}
    for pid in farm.pids().values():
        pin_all(pid, SERVER_CPUS)
    idle = await idle_cpu(pids)
    try:
        for level in streams or LEVELS:
            while len(tasks) < level:
                url = farm.webapps[len(tasks) % len(farm.webapps)]
                # each starts at a random moment within one reply's time: its replies
                # then begin and end when others' do not, as a site's users' do
                start = random.uniform(0, TOKENS / TOKENS_PER_S)
                tasks.append(asyncio.create_task(browser(url, seen, stop, start, watchers)))
            await asyncio.sleep(WARMUP_S)
            broken = [t for t in tasks if t.done()]
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            t0 = time.time()
            await asyncio.sleep(WINDOW_S)
            t1 = time.time()
            cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
            delays = [d for when, d in seen.delays if t0 <= when < t1]
            replies = sum(1 for when in seen.replies if t0 <= when < t1)
            p99 = pct(delays, 0.99)
            row: dict[str, Any] = {
                "streams": level,
                "chunks": len(delays),
                "replies": replies,
                "p50": pct(delays, 0.50),
                "p99": p99,
                "cpu": cpu,
                "window": t1 - t0,
                "failures": seen.failures + len(broken),
                "idle": idle,
                "watchers": watchers,
            }
            rows.append(row)
            print(_row_text(row), flush=True)
            if not carried(row) or broken:
                break
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return rows


async def idle_cpu(pids: dict[str, int]) -> dict[str, float]:
    """Each process's CPU a second with the fleet online and no stream: its heartbeats,
    health checks and timers, which a farm pays for whatever its load."""
    await asyncio.sleep(WARMUP_S)
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.time()
    await asyncio.sleep(WINDOW_S)
    window = time.time() - t0
    return {name: (cpu_seconds(pid) - cpu0[name]) / window for name, pid in pids.items()}


def _row_text(row: dict[str, Any]) -> str:
    cpu = row["cpu"]
    server = sum(v for k, v in cpu.items() if k not in ("fleet", "browsers")) / row["window"]
    load = (cpu["fleet"] + cpu["browsers"]) / row["window"]
    return (
        f"{row['streams']:5d} streams: {row['chunks'] / row['window']:7.0f} chunks/s, "
        f"{row['replies'] / row['window']:5.1f} replies/s, added p50 "
        f"{row['p50'] * 1000:5.1f} ms p99 {row['p99'] * 1000:6.1f} ms; server core "
        f"{server:4.0%}, load core {load:4.0%}"
    )


async def run_design(
    design: str, tree: Path, count: int, streams: list[int] | None = None, watchers: int = 1
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="farm-capacity-") as tmp:
        work = Path(tmp)
        async with (
            broker_of("mosquitto") as broker,
            servers(design, tree, broker, work, count) as farm,
            fleet(design, farm, broker, work) as fleet_process,
        ):
            print(f"--- {design}, {count} coordinator(s) + {count} webapp(s)", flush=True)
            return await levels(farm, fleet_process.pid, streams, watchers)


def carried(row: dict[str, Any]) -> bool:
    """Every stream of the level ran at its rate (the server side did not slow the
    replies down or leave requests waiting), with p99 added delay under the target."""
    rate = row["chunks"] / row.get("watchers", 1) / row["window"]
    return bool(
        row["p99"] <= TARGET_P99_S
        and rate >= CARRIED * CHUNKS_PER_S * row["streams"]
        and row["failures"] == 0
    )


def capacity(rows: list[dict[str, Any]]) -> int:
    return max((r["streams"] for r in rows if carried(r)), default=0)


def _delays(row: dict[str, Any]) -> str:
    return f"{row['p50'] * 1000:.1f} / {row['p99'] * 1000:.1f} ms"


def _shares(row: dict[str, Any]) -> str:
    """The server side's cells of a row: the server core's load, each coordinator's CPU
    per reply in all and beyond idle, and each webapp's CPU per chunk received (per
    chunk per watching browser), with two of each a figure for each process."""
    cpu, window = row["cpu"], row["window"]
    chunks, replies = max(row["chunks"], 1), max(row["replies"], 1)
    coords = {k: v for k, v in cpu.items() if k.startswith("coordinator")}
    server = sum(v for k, v in cpu.items() if k not in ("fleet", "browsers"))
    share = " + ".join(f"{c / replies * 1000:.2f}" for c in coords.values())
    beyond = " + ".join(
        f"{(c - row['idle'][k] * window) / replies * 1000:.2f}" for k, c in coords.items()
    )
    webs = " + ".join(f"{v / chunks * 1e6:.0f}" for k, v in cpu.items() if k.startswith("webapp"))
    return f"{server / window:.0%} | {share} ms | {beyond} ms | {webs} µs"


def _table(results: dict[tuple[str, int], list[dict[str, Any]]]) -> str:
    head = (
        "| design | servers | streams | chunks/s | replies/s | added p50 / p99 | carried |"
        " server core | coordinator CPU per reply | beyond idle | webapp CPU per chunk |"
        " Mosquitto CPU per chunk | load core |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for (design, count), rows in results.items():
        for row in rows:
            cpu, window, chunks = row["cpu"], row["window"], max(row["chunks"], 1)
            lines.append(
                f"| {design} | {count}+{count} | {row['streams']} | {row['chunks'] / window:.0f}"
                f" | {row['replies'] / window:.1f} | {_delays(row)} |"
                f" {'yes' if carried(row) else 'no'} | {_shares(row)} |"
                f" {cpu['mosquitto'] / chunks * 1e6:.0f} µs |"
                f" {(cpu['fleet'] + cpu['browsers']) / window:.0%} |"
            )
    lines.append("")
    for (design, count), rows in results.items():
        idle = rows[0]["idle"] if rows else {}
        shares = ", ".join(
            f"{name} {rate:.1%}" for name, rate in idle.items() if name not in ("fleet", "browsers")
        )
        lines.append(
            f"- {design}, {count}+{count}, the fleet online and no stream: {shares} of the core."
        )
    for (design, count), rows in results.items():
        lines.append(
            f"- {design}, {count} coordinator(s) + {count} webapp(s): **{capacity(rows)}** "
            "concurrent streams carried (every one at its rate, p99 added delay under 100 ms)."
        )
    return "\n".join(lines)


async def measure() -> dict[tuple[str, int], list[dict[str, Any]]]:
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("the capacity benchmark needs two CPUs (server core, load core)")
    os.sched_setaffinity(0, LOAD_CPUS)
    trees = {"before": baseline_tree(), "after": REPO}
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for count in (1, 2):
        for design, tree in trees.items():
            results[(design, count)] = await run_design(design, tree, count)
    return results


def main() -> str:
    table = _table(asyncio.run(measure()))
    print(table)
    return table


def side_by_side(variants: dict[str, tuple[Path, int]], streams: list[int], runs: int) -> str:
    """One coordinator and one webapp of each variant (a tree, and how many websockets
    watch each thread), in turn, ``runs`` times each, at each of ``streams``: a change to
    the design after issue 18 measured side by side (the same harness, the same machine,
    minutes apart). The webapp's CPU is per chunk per watching browser."""
    os.sched_setaffinity(0, LOAD_CPUS)
    lines = [
        "| variant | run | streams | added p50 / p99 | server core | coordinator CPU per reply"
        " | beyond idle | webapp CPU per chunk per watcher |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows: list[tuple[int, str]] = []
    for run in range(1, runs + 1):
        for name, (tree, watchers) in variants.items():
            for row in asyncio.run(run_design("after", tree, 1, streams, watchers)):
                line = f"| {name} | {run} | {row['streams']} | {_delays(row)} | {_shares(row)} |"
                rows.append((row["streams"], line))
    rows.sort(key=lambda r: r[0])  # by streams, the runs in turn (a stable sort)
    table = "\n".join(lines + [line for _, line in rows])
    print(table)
    return table


def _cli() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.capacity")
    parser.add_argument("--compare", metavar="COMMIT", help="this tree against COMMIT")
    parser.add_argument(
        "--watchers", default="1", help="websockets watching each thread: N, or N,M,... to compare"
    )
    parser.add_argument("--streams", default="25,50,75", help="levels, side by side")
    parser.add_argument("--runs", type=int, default=2, help="runs of each variant, side by side")
    args = parser.parse_args()
    watchers = [int(n) for n in args.watchers.split(",")]
    variants: dict[str, tuple[Path, int]] = {}
    if args.compare:
        short = subprocess.run(
            ["git", "rev-parse", "--short", args.compare],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        variants[f"{short}, {watchers[0]} watching"] = (
            worktree(short, f"compare-{short}"),
            watchers[0],
        )
    for count in watchers:
        variants[f"this tree, {count} watching"] = (REPO, count)
    if len(variants) == 1:
        main()  # nothing to compare: the full run
    else:
        side_by_side(variants, [int(n) for n in args.streams.split(",")], args.runs)


if __name__ == "__main__":
    _cli()
