"""A TCP proxy the test controls, to cut the network between one client and the broker.

``cut()`` stops bytes flowing both ways without closing anything, as a partition does:
both ends only notice through their own timeouts (MQTT keepalive). ``restore()`` lets the
held bytes through (TCP would have retransmitted them), and a side that gave up and
closed during the cut closes the other side then. ``cut(to_broker=False)`` holds only
what the broker sends (its acknowledgements, say). ``sever()`` closes every connection
at once, as a broker restart does. ``delay_s`` delays every byte that way each way, as
a long link does (a worker at home, the broker in a data centre)."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from llama_farm.ports import free_port


class TcpProxy:
    def __init__(self, upstream_port: int, delay_s: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self.port = free_port()
        self.to_broker = asyncio.Event()
        self.to_client = asyncio.Event()
        self.restore()
        self.connections = 0
        self.holding = asyncio.Event()  # set once the cut holds back some bytes
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    def cut(self, *, to_broker: bool = True, to_client: bool = True) -> None:
        if to_broker:
            self.to_broker.clear()
        if to_client:
            self.to_client.clear()

    def restore(self) -> None:
        self.to_broker.set()
        self.to_client.set()

    def sever(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        pumps = [
            asyncio.create_task(self._pump(client_r, broker_w, self.to_broker)),
            asyncio.create_task(self._pump(broker_r, client_w, self.to_client)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)
            for writer in (client_w, broker_w):
                writer.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event
    ) -> None:
        if self.delay_s:
            await self._delayed_pump(reader, writer, flowing)
            return
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if not flowing.is_set():
                    self.holding.set()
                await flowing.wait()
                writer.write(data)
                await writer.drain()
            await flowing.wait()  # the close, too, waits for the network

    async def _delayed_pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event
    ) -> None:
        """Each read is written ``delay_s`` after it arrived, in order; reading goes on
        meanwhile, so the link carries many packets at once as a real one does."""
        loop = asyncio.get_running_loop()
        in_transit: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await in_transit.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                await flowing.wait()
                if not data:
                    return
                writer.write(data)
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        try:
            with contextlib.suppress(ConnectionError, OSError):
                while True:
                    data = await reader.read(65536)
                    in_transit.put_nowait((loop.time() + self.delay_s, data))
                    if not data:
                        break
                await delivering
        finally:
            delivering.cancel()


@asynccontextmanager
async def tcp_proxy(upstream_port: int, delay_s: float = 0.0) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(upstream_port, delay_s)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
