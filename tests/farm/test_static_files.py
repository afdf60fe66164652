"""The chat's pages and static files, served from memory (webapp/static_files.py): what
browsers cache by, and no file left open by a client that hangs up mid-request."""

import asyncio
import gc
import random
import socket
import struct
from pathlib import Path

import httpx
from quart import Quart, Response

from farm_runtime.http_serving import serve_app
from llama_farm.ports import free_port
from tests.farm.test_coordinator_down import webapp
from tests.support.brokers import RunningBroker
from tests.support.farm import wait_until
from webapp.app import STATIC
from webapp.static_files import StaticFiles


async def test_clients_that_hang_up_mid_request_leave_no_file_open(
    broker: RunningBroker,
) -> None:
    """Each connection asks for the chat page and is reset a moment later. With the page
    opened per request in a thread (Quart's send_from_directory), some resets landed while
    the thread opened it, and the file was left to the garbage collector: an "unclosed
    file" warning, which fails this test."""
    async with webapp(free_port(), "t" * 32, broker.settings()) as url:
        port = int(url.rsplit(":", 1)[1])
        reset = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with a RST
        for _ in range(1500):
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.sendall(b"GET / HTTP/1.1\r\nHost: farm\r\n\r\n")
                await asyncio.sleep(random.uniform(0, 0.002))
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)
        async with httpx.AsyncClient(base_url=url) as browser:
            assert (await browser.get("/")).status_code == 200  # it still serves
    gc.collect()


async def test_pages_carry_what_browsers_cache_by(broker: RunningBroker) -> None:
    async with (
        webapp(free_port(), "t" * 32, broker.settings()) as url,
        httpx.AsyncClient(base_url=url) as browser,
    ):
        page = await browser.get("/")
        assert page.status_code == 200
        assert page.content == (STATIC / "index.html").read_bytes()
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src" in page.headers["content-security-policy"]
        assert "public" in page.headers["cache-control"]
        assert page.headers["last-modified"]
        etag = page.headers["etag"]

        again = await browser.get("/", headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""

        script = await browser.get("/static/app.js", headers={"Range": "bytes=0-9"})
        assert script.status_code == 206
        assert script.content == (STATIC / "app.js").read_bytes()[:10]
        assert (await browser.get("/static/nothing.js")).status_code == 404


async def test_a_file_changed_on_disk_is_served_anew(tmp_path: Path) -> None:
    """As in dev mode, when someone edits the page: the next load has the new text and a
    new ETag."""
    (tmp_path / "page.html").write_text("<p>one</p>")
    files = StaticFiles(tmp_path)
    app = Quart(__name__)

    @app.get("/")
    async def page() -> Response:
        return await files.response("page.html")

    port, stop = free_port(), asyncio.Event()
    server = asyncio.create_task(serve_app(app, "127.0.0.1", port, stop))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as browser:

            async def serving() -> bool:
                try:
                    return (await browser.get("/")).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_until(serving, what="the app to serve")
            first = await browser.get("/")
            assert first.text == "<p>one</p>"
            (tmp_path / "page.html").write_text("<p>two, longer</p>")
            second = await browser.get("/", headers={"If-None-Match": first.headers["etag"]})
            assert second.status_code == 200
            assert second.text == "<p>two, longer</p>"
            assert second.headers["etag"] != first.headers["etag"]
    finally:
        stop.set()
        await server
