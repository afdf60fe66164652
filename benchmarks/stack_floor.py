"""What the chosen libraries cost for one message, alone on the server core, with none of
the farm's own code: the floor under the capacity benchmark's per-chunk and per-reply
figures, and so under issue 18's targets (1,000 streams on one core, 40 µs per chunk per
watching browser, 1.5 ms of coordinator per reply).

Each part is a child process pinned to the server core (CPU 0), its CPU read from /proc
over a window; Mosquitto and the load run on the load core (CPU 1):

* **MQTT read**: an aiomqtt client made as the webapp makes its own
  (``farm_runtime.broker.make_client`` with ``deliver``: each message handed to a
  callback as it is read), subscribed at QoS 0 as a webapp takes live chunks; the
  callback only counts. The load publishes chunk-sized QoS 0 messages (pre-encoded
  packets), each stream on its own phase, each message its own write.
* **websocket write**: a Quart route under hypercorn (``farm_runtime.http_serving``, the
  services' own server settings) sending a chunk-sized text message to each of its
  websockets at one stream's chunk rate, on its own phase; one websocket per stream, as
  one browser watching each thread. aiohttp reads them on the load core. The same
  under the ``websockets`` library (amqtt's), for comparison: what another Python
  websocket server would change.
* **HTTP request**: a Quart route reading a small JSON body and answering JSON (a
  message sent), kept-alive connections from aiohttp on the load core.

Rates: what 100 and 1,000 streams of 30 tokens/s give under the chunk rule (15.3 chunks
and 0.33 replies a second each). ``python -m benchmarks stack_floor``."""

import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from benchmarks.broker_floor import connect_packet, paced, publish_qos0_packet
from benchmarks.capacity import CHUNKS_PER_S, LOAD_CPUS, SERVER_CPUS, TOKENS, TOKENS_PER_S, pin_all
from benchmarks.farm_processes import cpu_seconds
from farm_protocol import topics
from farm_protocol.version import TOPIC_ROOT
from llama_farm.ports import free_port
from tests.support.brokers import broker_of, dynsec, full_access_commands, wait_port

STREAMS = [100, 1000]
REPLIES_PER_S = TOKENS_PER_S / TOKENS  # a stream's replies a second
WARMUP_S, WINDOW_S = 2.0, 6.0
CHUNK = b'{"kind":"chunk","job_id":"%s","attempt":1,"seq":%d,"text":" the quick brown"}'
BODY = {"text": "How far is the moon from the earth, in kilometres?"}


# --- the server core's processes ---------------------------------------------------------


@contextlib.asynccontextmanager
async def _chunk_reader(broker: list[str], deliver: Callable[[Any], None]) -> AsyncIterator[None]:
    """An MQTT client made as the webapp makes its own, on ``broker`` (port, username,
    password), every live chunk handed to ``deliver`` as it is read (QoS 0)."""
    from farm_runtime.broker import BrokerSettings, make_client

    url = f"mqtt://127.0.0.1:{broker[0]}"
    settings = BrokerSettings(url=url, username=broker[1], password=broker[2])
    client = make_client(settings, identifier=f"floor-{uuid.uuid4().hex[:6]}", deliver=deliver)
    async with client:
        await client.subscribe(f"{TOPIC_ROOT}/workers/+/jobs/+/+", qos=0)
        yield


async def _serve_mqtt(port: int, username: str, password: str) -> None:
    received = 0

    def count(_message: object) -> None:
        nonlocal received
        received += 1

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(received, flush=True))
    async with _chunk_reader([str(port), username, password], count):
        print("ready", flush=True)
        await asyncio.Event().wait()


async def _send_paced(sock: Any) -> None:
    """A chunk-sized text message on ``sock`` at one stream's chunk rate, on its own
    phase, until the connection ends."""
    loop = asyncio.get_running_loop()
    every = 1 / CHUNKS_PER_S
    due = loop.time() + random.uniform(0, every)
    seq = 0
    while True:
        await asyncio.sleep(max(0.0, due - loop.time()))
        await sock.send((CHUNK % (b"j" * 22, seq)).decode())
        seq, due = seq + 1, due + every


async def _serve_websockets(port: int) -> None:
    """The websocket part under the ``websockets`` library (amqtt's) instead of Quart and
    hypercorn: what another Python websocket server would change."""
    from websockets.asyncio.server import serve

    async with serve(_send_paced, "127.0.0.1", port, compression=None):
        print("ready", flush=True)  # listening already
        await asyncio.Event().wait()


async def _serve_http(port: int, broker: list[str]) -> None:
    """The HTTP parts' server; with ``broker`` (port, username, password) also the
    relay's MQTT client, each message on a thread's topic sent to that thread's
    websockets (``/relay/<thread>``)."""
    from quart import Quart, request, websocket

    from farm_runtime.http_serving import serve_app

    app = Quart(__name__)
    watching: dict[str, list[asyncio.Queue[bytes]]] = {}

    @app.post("/send")
    async def send() -> dict[str, Any]:
        body = await request.get_json()
        return {"queued": True, "chars": len(body["text"])}

    @app.websocket("/ws")
    async def paced() -> None:
        await _send_paced(websocket._get_current_object())  # type: ignore[attr-defined]

    @app.websocket("/relay/<thread>")
    async def relay(thread: str) -> None:
        sock = websocket._get_current_object()  # type: ignore[attr-defined]
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        watching.setdefault(thread, []).append(queue)
        await sock.accept()  # Quart accepts on the first send otherwise: none comes yet
        while True:
            await sock.send((await queue.get()).decode())

    def deliver(message: Any) -> None:
        for queue in watching.get(message.topic.value.split("/")[5], ()):
            queue.put_nowait(message.payload)

    print("ready", flush=True)
    if not broker:
        await serve_app(app, "127.0.0.1", port, asyncio.Event())
        return
    async with _chunk_reader(broker, deliver):
        await serve_app(app, "127.0.0.1", port, asyncio.Event())


# --- the load core: drivers ----------------------------------------------------------------


async def _child(*args: str) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.stack_floor",
        *args,
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=lambda: os.sched_setaffinity(0, SERVER_CPUS),
    )
    assert child.stdout is not None
    if (await child.stdout.readline()).strip() != b"ready":
        raise RuntimeError(f"stack_floor {args[0]} did not start")
    return child


async def _stop(child: asyncio.subprocess.Process) -> None:
    child.terminate()
    await child.wait()


async def _window(pid: int, counted: Callable[[], Awaitable[int]]) -> tuple[float, int, float]:
    """The child's CPU and the messages it handled over WINDOW_S, after WARMUP_S."""
    await asyncio.sleep(WARMUP_S)
    cpu0, n0, t0 = cpu_seconds(pid), await counted(), time.monotonic()
    await asyncio.sleep(WINDOW_S)
    cpu, n = cpu_seconds(pid) - cpu0, await counted() - n0
    return cpu, n, time.monotonic() - t0


class _Publisher:
    """One connection publishing each stream's chunks (QoS 0, pre-encoded), each on its
    own thread's topic as a worker does."""

    def __init__(self, writer: asyncio.StreamWriter, threads: list[str]) -> None:
        self.writer = writer
        self.jobs = [uuid.uuid4().hex for _ in threads]
        self.topics = [
            topics.job_events("w0001", t, j) for t, j in zip(threads, self.jobs, strict=True)
        ]
        self.seqs = [0] * len(threads)

    @classmethod
    async def open(cls, port: int, account: tuple[str, str], threads: list[str]) -> "_Publisher":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(connect_packet(f"load-{uuid.uuid4().hex[:6]}", *account))
        if (await reader.readexactly(4))[3] != 0:
            raise RuntimeError("the broker refused the load's publisher")
        return cls(writer, threads)

    def publish(self, i: int) -> None:
        payload = CHUNK % (self.jobs[i].encode(), self.seqs[i])
        self.writer.write(publish_qos0_packet(self.topics[i], payload))
        self.seqs[i] += 1


async def _measured(
    part: str,
    streams: int,
    child: asyncio.subprocess.Process,
    counted: Callable[[], Awaitable[int]],
    load: Callable[[int], None] | None = None,
    rate_each: float = CHUNKS_PER_S,
    settle: Callable[[], Awaitable[object]] | None = None,
) -> dict[str, Any]:
    """The child's CPU per message over the window, with ``load(i)`` driven for each
    stream at ``rate_each`` meanwhile (None: the child makes its own load); ``settle``
    waits for the load in flight before the child is stopped."""
    loop = asyncio.get_running_loop()
    driver = None
    if load is not None:
        driver = asyncio.create_task(paced(streams, 1 / rate_each, loop.time() + 3600, load))
    try:
        cpu, n, window = await _window(child.pid, counted)
    finally:
        if driver is not None:
            driver.cancel()
        if settle is not None:
            await settle()
        await _stop(child)
    return {"part": part, "streams": streams, "cpu": cpu, "count": n, "window": window}


async def mqtt_read(port: int, account: tuple[str, str], streams: int) -> dict[str, Any]:
    child = await _child("serve-mqtt", str(port), *account)
    assert child.stdout is not None
    out = child.stdout
    publisher = await _Publisher.open(port, account, [uuid.uuid4().hex for _ in range(streams)])

    async def counted() -> int:
        child.send_signal(signal.SIGUSR1)
        return int(await out.readline())

    try:
        return await _measured("mqtt", streams, child, counted, publisher.publish)
    finally:
        publisher.writer.close()


class _Readers:
    """One aiohttp websocket per stream on the load core, counting what they receive."""

    def __init__(self) -> None:
        self.received = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.opened = 0

    async def _read(self, session: Any, url: str, ready: asyncio.Event, want: int) -> None:
        async with session.ws_connect(url) as ws:
            self.opened += 1
            if self.opened == want:
                ready.set()
            async for _message in ws:
                self.received += 1

    async def open(self, session: Any, urls: list[str]) -> None:
        """Until every websocket is open; a reader that fails first raises its error."""
        ready = asyncio.Event()
        self.tasks = [
            asyncio.create_task(self._read(session, url, ready, len(urls))) for url in urls
        ]
        opened = asyncio.create_task(ready.wait())
        try:
            async with asyncio.timeout(60):
                while not opened.done():
                    done, _ = await asyncio.wait(
                        [opened, *self.tasks], return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done - {opened}:
                        task.result()  # a reader ended before all were open: its error
                        raise RuntimeError("a websocket closed before the others opened")
        except BaseException:
            opened.cancel()
            await self.close()
            raise

    async def counted(self) -> int:
        return self.received

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def websocket_write(streams: int, server: str = "quart") -> dict[str, Any]:
    """``server``: "quart" (Quart under hypercorn, as the webapp) or "websockets"."""
    import aiohttp

    port = free_port()
    if server == "quart":
        child = await _child("serve-http", str(port))
        await wait_port(port, 30)  # the child says ready before it binds
    else:
        child = await _child("serve-websockets", str(port))
    readers = _Readers()
    part = "websocket" if server == "quart" else "websockets"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await readers.open(session, [f"http://127.0.0.1:{port}/ws"] * streams)
        try:  # the server paces itself: nothing to drive
            return await _measured(part, streams, child, readers.counted)
        finally:
            await readers.close()


async def relay(broker_port: int, account: tuple[str, str], streams: int) -> dict[str, Any]:
    import aiohttp

    port = free_port()
    child = await _child("serve-http", str(port), str(broker_port), *account)
    await wait_port(port, 30)  # the child says ready before it binds
    threads = [uuid.uuid4().hex for _ in range(streams)]
    publisher = await _Publisher.open(broker_port, account, threads)
    readers = _Readers()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await readers.open(session, [f"http://127.0.0.1:{port}/relay/{t}" for t in threads])
        try:
            return await _measured("relay", streams, child, readers.counted, publisher.publish)
        finally:
            await readers.close()
            publisher.writer.close()


async def http_request(streams: int) -> dict[str, Any]:
    import aiohttp

    port = free_port()
    child = await _child("serve-http", str(port))
    await wait_port(port, 30)  # the child says ready before it binds
    done = 0
    pending: set[asyncio.Task[None]] = set()

    async def post(session: aiohttp.ClientSession) -> None:
        nonlocal done
        async with session.post(f"http://127.0.0.1:{port}/send", json=BODY) as response:
            await response.read()
            done += 1

    async def counted() -> int:
        return done

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        def send(_i: int) -> None:
            task = asyncio.create_task(post(session))
            pending.add(task)
            task.add_done_callback(pending.discard)

        def answered() -> Awaitable[object]:  # the requests in flight, before the stop
            return asyncio.gather(*pending)

        return await _measured("http", streams, child, counted, send, REPLIES_PER_S, answered)


async def measure() -> list[dict[str, Any]]:
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("the stack floor benchmark needs two CPUs (server core, load core)")
    os.sched_setaffinity(0, LOAD_CPUS)
    rows: list[dict[str, Any]] = []

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        print(_row_text(row), flush=True)

    async with broker_of("mosquitto") as broker:
        assert broker.pid is not None
        assert broker.admin_password is not None
        pin_all(broker.pid(), LOAD_CPUS)  # the broker is load here: the child is measured
        account = ("floor", uuid.uuid4().hex)
        await dynsec(broker.port, broker.admin_password, full_access_commands(*account))
        for streams in STREAMS:
            done(await mqtt_read(broker.port, account, streams))
        for streams in STREAMS:
            done(await websocket_write(streams))
        for streams in STREAMS:
            done(await websocket_write(streams, "websockets"))
        for streams in STREAMS:
            done(await relay(broker.port, account, streams))
    for streams in STREAMS:
        done(await http_request(streams))
    return rows


_WHAT = {
    "mqtt": "aiomqtt + paho: a message read and handed to a callback (a webapp's chunk in)",
    "websocket": "Quart + hypercorn: a websocket text message sent (a chunk to one browser)",
    "websockets": "websockets (amqtt's), for comparison: the same message without Quart"
    " and hypercorn",
    "relay": "both in one process: a message read and sent on to its thread's websocket"
    " (a bare webapp: no check, no decoding)",
    "http": "Quart + hypercorn: a JSON POST answered (a message sent, at each service)",
}


def _row_text(row: dict[str, Any]) -> str:
    w, n = row["window"], max(row["count"], 1)
    return (
        f"{row['part']:9s} {row['streams']:5d} streams: {row['count'] / w:7.0f} a second, "
        f"{row['cpu'] / n * 1e6:6.1f} µs CPU each, {row['cpu'] / w:4.0%} of the server core"
    )


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| what | streams | messages a second | CPU per message | of the server core |",
        "|---|---|---|---|---|",
    ]
    per: dict[tuple[str, int], float] = {}
    for row in rows:
        w, n = row["window"], max(row["count"], 1)
        per[(row["part"], row["streams"])] = row["cpu"] / n
        lines.append(
            f"| {_WHAT[row['part']]} | {row['streams']} | {row['count'] / w:.0f} |"
            f" {row['cpu'] / n * 1e6:.1f} µs | {row['cpu'] / w:.0%} |"
        )
    top = max(STREAMS)
    chunks, replies = top * CHUNKS_PER_S, top * REPLIES_PER_S
    relayed, answered = per[("relay", top)] * chunks, 2 * per[("http", top)] * replies
    relay_rate = next(
        r["count"] / r["window"] for r in rows if r["part"] == "relay" and r["streams"] == top
    )
    lines += [
        "",
        f"- At {top} streams ({chunks:,.0f} chunks and {replies:.0f} replies a second) one"
        f" core gives {1e6 / chunks:.0f} µs a chunk for the whole server side. A bare relay"
        f" of the chunks needs {relayed:.0%} of the core at its cost per chunk (it relayed"
        f" {relay_rate:,.0f} a second), and a reply's two HTTP requests (at the webapp and"
        f" at the coordinator) {answered:.0%}: {relayed + answered:.0%} before Mosquitto,"
        " any check or decoding, the database or the farm's own code.",
        f"- A further browser watching a thread costs at least its websocket write:"
        f" {per[('websocket', top)] * 1e6:.0f} µs a chunk at that rate,"
        f" {per[('websocket', min(STREAMS))] * 1e6:.0f} µs at {min(STREAMS)} streams"
        f" ({per[('websockets', top)] * 1e6:.0f} and"
        f" {per[('websockets', min(STREAMS))] * 1e6:.0f} µs under websockets).",
    ]
    return "\n".join(lines)


def main() -> str:
    table = _table(asyncio.run(measure()))
    print(table)
    return table


def _serve(argv: list[str]) -> None:
    if argv[0] == "serve-mqtt":
        asyncio.run(_serve_mqtt(int(argv[1]), argv[2], argv[3]))
    elif argv[0] == "serve-websockets":
        asyncio.run(_serve_websockets(int(argv[1])))
    elif argv[0] == "serve-http":
        asyncio.run(_serve_http(int(argv[1]), argv[2:]))
    else:
        raise SystemExit(f"unknown part {argv[0]}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        _serve(sys.argv[1:])
    else:
        main()
