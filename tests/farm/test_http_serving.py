"""How every service serves HTTP (farm_runtime.http_serving), over a real socket."""

import asyncio

from quart import Quart

from farm_runtime.http_serving import serve_app
from llama_farm.ports import free_port
from tests.support.farm import wait_until

REQUEST = b"GET /ping HTTP/1.1\r\nHost: farm\r\n\r\n"
CLIENT_EXPIRY_S = 5.0  # httpx's default keep-alive expiry (the OpenAI SDK, the webapp)


async def test_an_idle_connection_outlives_the_clients_keep_alive() -> None:
    """A client may reuse a connection it has kept idle for up to its own expiry: the
    server must not close it first. (With hypercorn's default 5 s both closed at the same
    moment, and under load a request sent on a connection being closed was lost.)"""
    app = Quart(__name__)

    @app.get("/ping")
    async def ping() -> str:
        return "pong"

    port, stop = free_port(), asyncio.Event()
    server = asyncio.create_task(serve_app(app, "127.0.0.1", port, stop))

    async def up() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    await wait_until(up, what="the server")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for idle_s in (CLIENT_EXPIRY_S + 0.5, 0):  # idle as long as a client keeps it
            writer.write(REQUEST)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert await reader.readexactly(4) == b"pong"
            await asyncio.sleep(idle_s)
    finally:
        writer.close()
        stop.set()
        await server
