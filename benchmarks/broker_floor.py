"""The floor under the capacity benchmark: Mosquitto alone on the server core, relaying
the live chunks of many 30-token/s streams from their workers to one subscriber in a
webapp's place, with no coordinator and no webapp. Whatever the farm's own processes
cost, one server core cannot carry more streams than this.

* **Server core (CPU 0)**: Mosquitto, from the project's configuration (dynamic
  security, persistence), nothing else.
* **Load core (CPU 1)**: this process. Workers with their own accounts and connections,
  two streams each (a laptop's two slots), publish each stream's chunks at QoS 1 as the
  real worker does: a JSON ``JobChunk`` of two tokens every 2/30 s on the job's topic
  under its thread, each written to its socket on its own. One subscriber takes, as a
  webapp does, each stream's thread filter at QoS 0.
* Packets are built and parsed by hand (pre-encoded MQTT 3.1.1), so that the load costs
  little and the broker is the limit. Each chunk's text is its send time: the subscriber
  knows each chunk's delay.

Streams go up level by level, as in ``benchmarks/capacity.py``; a level is carried when
the chunks arrive at 90% of their rate or more with p99 delay under 100 ms.
``python -m benchmarks broker_floor``."""

import asyncio
import os
import random
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.capacity import CARRIED, LOAD_CPUS, SERVER_CPUS, TARGET_P99_S, pin_all
from benchmarks.farm_processes import cpu_seconds
from farm_protocol import topics
from tests.support.brokers import RunningBroker, broker_of, dynsec, full_access_commands

LEVELS = [250, 500, 750, 1000, 1500, 2000, 3000]
STREAMS_PER_WORKER = 2
CHUNK_EVERY_S = 2 / 30  # two tokens a chunk at 30 tokens/s
WARMUP_S, WINDOW_S = 3.0, 8.0


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    data = s.encode()
    return struct.pack("!H", len(data)) + data


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _length(len(body)) + body


def connect_packet(client_id: str, username: str, password: str) -> bytes:
    header = _string("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60)  # user, pass, clean
    return _packet(0x10, header + _string(client_id) + _string(username) + _string(password))


def publish_packet(topic: str, packet_id: int, payload: bytes) -> bytes:
    """A QoS 1 PUBLISH."""
    return _packet(0x32, _string(topic) + struct.pack("!H", packet_id) + payload)


def publish_qos0_packet(topic: str, payload: bytes) -> bytes:
    """A QoS 0 PUBLISH (no packet id, no acknowledgement)."""
    return _packet(0x30, _string(topic) + payload)


def subscribe_packet(packet_id: int, filters: list[str]) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_string(f) + b"\x00" for f in filters)
    return _packet(0x82, body)


def split_packets(buffer: bytearray) -> list[tuple[int, bytes]]:
    """The whole packets at the start of ``buffer`` (removed from it): (type, body)."""
    packets: list[tuple[int, bytes]] = []
    at = 0
    while at + 2 <= len(buffer):
        length, mult, i = 0, 1, at + 1
        while True:
            if i >= len(buffer):
                del buffer[:at]
                return packets
            byte = buffer[i]
            length += (byte & 127) * mult
            mult *= 128
            i += 1
            if not byte & 128:
                break
        if i + length > len(buffer):
            break
        packets.append((buffer[at] >> 4, bytes(buffer[i : i + length])))
        at = i + length
    del buffer[:at]
    return packets


async def _open(broker: RunningBroker, username: str, password: str) -> tuple[Any, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    writer.transport.get_extra_info("socket").setsockopt(6, 1, 1)  # TCP_NODELAY
    writer.write(connect_packet(f"{username}-{uuid.uuid4().hex[:6]}", username, password))
    connack = await reader.readexactly(4)
    if connack[3] != 0:
        raise RuntimeError(f"the broker refused {username}: {connack!r}")
    return reader, writer


async def paced(count: int, every_s: float, end: float, act: Callable[[int], None]) -> None:
    """``act(i)`` for each of ``count`` streams once every ``every_s``, each stream on
    its own random phase within it (in the order they fall due), until ``end`` (loop
    time): many streams' messages spread out as independent streams' are."""
    due = sorted((random.uniform(0, every_s), i) for i in range(count))
    loop = asyncio.get_running_loop()
    start, cycle = loop.time(), 0
    while loop.time() < end:
        base = start + cycle * every_s
        for offset, i in due:
            wait = base + offset - loop.time()
            if wait > 0.002:
                await asyncio.sleep(wait)
            act(i)
        cycle += 1


@dataclass
class Worker:
    writer: Any
    packet_id: int = 0


@dataclass
class Stream:
    worker: Worker
    topic: str  # its job's live chunks topic, under its thread
    job_id: bytes
    seq: int = 0

    def publish(self) -> None:
        """Its next chunk, of two tokens, each its send time."""
        self.worker.packet_id = self.worker.packet_id % 65535 + 1
        text = (f"{time.time():.4f} " * 2).encode()
        payload = b'{"kind":"chunk","job_id":"%s","attempt":1,"seq":%d,"text":"%s"}' % (
            self.job_id,
            self.seq,
            text,
        )
        self.seq += 1
        self.worker.writer.write(publish_packet(self.topic, self.worker.packet_id, payload))


@dataclass
class Receipts:
    delays: list[float] = field(default_factory=list)
    counting: bool = False

    def take(self, body: bytes) -> None:
        if not self.counting:
            return
        topic_len = struct.unpack_from("!H", body)[0]
        payload = body[2 + topic_len :]
        start = payload.index(b'"text":"') + 8
        sent = float(payload[start : payload.index(b" ", start)])
        self.delays.append(time.time() - sent)


async def _drain_acks(reader: Any) -> None:
    while await reader.read(65536):
        pass


async def _subscriber(reader: Any, receipts: Receipts) -> None:
    buffer = bytearray()
    while data := await reader.read(262144):
        buffer += data
        for kind, body in split_packets(buffer):
            if kind == 3:
                receipts.take(body)


async def level(
    broker: RunningBroker, accounts: list[tuple[str, str]], streams: int
) -> dict[str, Any]:
    workers: list[Worker] = []
    live: list[Stream] = []
    tasks: list[asyncio.Task[None]] = []
    threads = [uuid.uuid4().hex for _ in range(streams)]
    receipts = Receipts()
    sub_reader, sub_writer = await _open(broker, *accounts[0])
    filters = [topics.thread_chunks(t) for t in threads]  # as a webapp watching them
    for at in range(0, len(filters), 100):
        sub_writer.write(subscribe_packet(at // 100 + 1, filters[at : at + 100]))
    tasks.append(asyncio.create_task(_subscriber(sub_reader, receipts)))
    for w in range(streams // STREAMS_PER_WORKER):
        name, password = accounts[1 + w]
        reader, writer = await _open(broker, name, password)
        worker = Worker(writer)
        workers.append(worker)
        for thread in threads[w * STREAMS_PER_WORKER : (w + 1) * STREAMS_PER_WORKER]:
            job = uuid.uuid4().hex
            live.append(Stream(worker, topics.job_events(name, thread, job), job.encode()))
        tasks.append(asyncio.create_task(_drain_acks(reader)))

    loop = asyncio.get_running_loop()
    end = loop.time() + WARMUP_S + WINDOW_S + 0.5
    publisher = asyncio.create_task(
        paced(len(live), CHUNK_EVERY_S, end, lambda i: live[i].publish())
    )
    await asyncio.sleep(WARMUP_S)
    pid = broker.pid() if broker.pid else 0
    cpu0, load0, t0 = cpu_seconds(pid), time.process_time(), time.monotonic()
    receipts.counting = True
    await asyncio.sleep(WINDOW_S)
    receipts.counting = False
    window = time.monotonic() - t0
    cpu, load = cpu_seconds(pid) - cpu0, time.process_time() - load0
    await publisher
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for worker in workers:
        worker.writer.close()
    sub_writer.close()
    delays = sorted(receipts.delays) or [float("inf")]
    return {
        "streams": streams,
        "chunks": len(receipts.delays),
        "window": window,
        "p50": delays[len(delays) // 2],
        "p99": delays[int(len(delays) * 0.99)],
        "broker_cpu": cpu,
        "load_cpu": load,
    }


def carried(row: dict[str, Any]) -> bool:
    rate = row["chunks"] / row["window"]
    return bool(row["p99"] <= TARGET_P99_S and rate >= CARRIED * row["streams"] / CHUNK_EVERY_S)


async def measure() -> list[dict[str, Any]]:
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("the broker floor benchmark needs two CPUs (server core, load core)")
    os.sched_setaffinity(0, LOAD_CPUS)
    rows: list[dict[str, Any]] = []
    async with broker_of("mosquitto") as broker:
        assert broker.pid is not None
        assert broker.admin_password is not None
        pin_all(broker.pid(), SERVER_CPUS)
        accounts = [
            (f"w{i:04d}", uuid.uuid4().hex) for i in range(1 + max(LEVELS) // STREAMS_PER_WORKER)
        ]
        for at in range(0, len(accounts), 200):
            commands = [
                c for name, pw in accounts[at : at + 200] for c in full_access_commands(name, pw)
            ]
            await dynsec(broker.port, broker.admin_password, commands)
        for streams in LEVELS:
            row = await level(broker, accounts, streams)
            rows.append(row)
            print(_row_text(row), flush=True)
            if not carried(row):
                break
    return rows


def _row_text(row: dict[str, Any]) -> str:
    w = row["window"]
    return (
        f"{row['streams']:5d} streams: {row['chunks'] / w:6.0f} chunks/s, p50 "
        f"{row['p50'] * 1000:6.1f} ms p99 {row['p99'] * 1000:7.1f} ms; Mosquitto "
        f"{row['broker_cpu'] / w:4.0%} of the server core, "
        f"{row['broker_cpu'] / max(row['chunks'], 1) * 1e6:4.0f} µs a chunk; load core "
        f"{row['load_cpu'] / w:4.0%}"
    )


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| streams | chunks/s | delay p50 / p99 | carried | Mosquitto (server core) |"
        " Mosquitto CPU per chunk | load core |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        w, chunks = row["window"], max(row["chunks"], 1)
        lines.append(
            f"| {row['streams']} | {row['chunks'] / w:.0f} | {row['p50'] * 1000:.1f} / "
            f"{row['p99'] * 1000:.1f} ms | {'yes' if carried(row) else 'no'} |"
            f" {row['broker_cpu'] / w:.0%} | {row['broker_cpu'] / chunks * 1e6:.0f} µs |"
            f" {row['load_cpu'] / w:.0%} |"
        )
    best = max((r["streams"] for r in rows if carried(r)), default=0)
    lines += ["", f"- Mosquitto alone on one core: **{best}** concurrent streams carried."]
    return "\n".join(lines)


def main() -> str:
    table = _table(asyncio.run(measure()))
    print(table)
    return table


if __name__ == "__main__":
    main()
