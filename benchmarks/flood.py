"""Oversized and flooding input: a worker's account publishes 16 MiB messages and floods
its progress topics (what the coordinators receive) with checkpoints for made-up jobs
and with junk. Measured: the coordinator's
and the webapp's resident memory before and after (each settles its garbage first), the
log lines the flood cost, and that the farm still answers. The farm runs one process per
service on Mosquitto with the project's config (benchmarks/farm_processes.py)."""

import asyncio
import time
from pathlib import Path

import aiomqtt
import httpx

from benchmarks.farm_processes import ProcessFarm, process_farm
from coordinator.db.database import migrate, open_database
from coordinator.workers.registry import WorkerRegistry
from farm_protocol import topics
from farm_protocol.codec import encode
from farm_protocol.payloads import JobCheckpoint

BIG = 16 * 1024 * 1024
CHUNKS = 20_000
JUNK = 5_000


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def as_worker(
    farm: ProcessFarm, worker_id: str, key: str, in_flight: int | None = None
) -> aiomqtt.Client:
    """A connection with a worker's credentials (and its client id, which they are bound to)."""
    return aiomqtt.Client(
        "127.0.0.1",
        farm.broker.port,
        username=worker_id,
        password=key,
        identifier=f"worker-{worker_id}",
        max_inflight_messages=in_flight,
    )


async def flood(farm: ProcessFarm, worker_id: str, key: str) -> dict[str, int]:
    sent = {"big refused": 0, "chunks": 0, "junk": 0}
    for _ in range(3):  # each costs the rogue its connection
        try:
            async with as_worker(farm, worker_id, key) as rogue:
                big = topics.job_progress(worker_id, "t1", "big")
                await rogue.publish(big, b"x" * BIG, qos=1)
                await rogue.publish(topics.worker_status(worker_id), b"y", qos=1)
        except aiomqtt.MqttError:
            sent["big refused"] += 1
    async with as_worker(farm, worker_id, key, in_flight=100) as rogue:
        for n in range(CHUNKS):
            made_up = JobCheckpoint(job_id=f"made-up-{n}", attempt=1, texts=["z" * 2000])
            await rogue.publish(
                topics.job_progress(worker_id, "t1", made_up.job_id), encode(made_up), qos=1
            )
            sent["chunks"] += 1
        for n in range(JUNK):
            await rogue.publish(
                topics.job_progress(worker_id, "t1", f"junk{n}"), b"\xff{" * 100, qos=1
            )
            sent["junk"] += 1
    return sent


async def rogue_account(farm: ProcessFarm) -> tuple[str, str]:
    """A registered worker of the farm's that no process runs: the rogue's credentials."""
    db = open_database(farm.database_url)
    migrate(db)  # binds the tables to it
    info, key = WorkerRegistry(db, grace_s=10).add("rogue")
    db.close()
    await farm.broker.add_client(info.id, key)
    return info.id, key


async def run() -> dict[str, object]:
    async with process_farm("mosquitto", workers=1, concurrency=2) as farm:
        worker_id, key = await rogue_account(farm)
        pids = {name: farm.pid(name) for name in ("coordinator", "webapp")}
        await asyncio.sleep(2)
        before = {name: rss_mib(pid) for name, pid in pids.items()}
        logs = {name: farm.log_size(name) for name in pids}
        started = time.perf_counter()
        sent = await flood(farm, worker_id, key)
        flooded_s = time.perf_counter() - started
        await asyncio.sleep(5)  # the services work through what arrived
        after = {name: rss_mib(pid) for name, pid in pids.items()}
        lines = {name: farm.log_lines_since(name, logs[name]) for name in pids}
        async with httpx.AsyncClient(base_url=farm.web_url, timeout=30) as http:
            body = {"model": "llama3", "messages": [{"role": "user", "content": "still there?"}]}
            answer = await http.post(
                "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {farm.api_key}"},
            )
        return {
            "sent": sent,
            "seconds": flooded_s,
            "before": before,
            "after": after,
            "log lines": lines,
            "answers": answer.status_code,
        }


def main() -> str:
    r = asyncio.run(run())
    before, after, lines = r["before"], r["after"], r["log lines"]
    assert isinstance(before, dict)
    assert isinstance(after, dict)
    assert isinstance(lines, dict)
    rows = [
        "| process | RSS before | after the flood | log lines it cost |",
        "|---|---|---|---|",
    ]
    for name in ("coordinator", "webapp"):
        rows.append(f"| {name} | {before[name]:.0f} MiB | {after[name]:.0f} MiB | {lines[name]} |")
    rows.append("")
    rows.append(
        f"Sent: {r['sent']} in {r['seconds']:.1f} s; afterwards a request answered {r['answers']}."
    )
    return "\n".join(rows)


if __name__ == "__main__":
    print(main())
