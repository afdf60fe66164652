"""Serving an ASGI app (Quart) with hypercorn until a stop event.

Only the services with an HTTP side import this (hypercorn is not a worker dependency).
"""

import asyncio
import logging
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from pydantic_core import from_json
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

# An idle keep-alive connection is kept this long. It must outlast the clients' own
# expiry, so that it is always the client that closes it: httpx (the OpenAI SDK, and the
# webapp's client of the coordinator) keeps one 5 s, hypercorn's default, and the two
# closing at the same moment dropped a request now and then under load (a client sends on
# a connection the server is closing: RemoteProtocolError or ReadError). 75 s as nginx.
KEEP_ALIVE_S = 75
# Connections waiting to be accepted (hypercorn's default 100 overflowed when hundreds of
# clients connected at once; the kernel caps it at net.core.somaxconn).
BACKLOG = 1024
BODY_READ_S = 10.0  # how long a response waits for the rest of an unread request body


async def serve_app(app: Any, host: str, port: int, stop: asyncio.Event) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = KEEP_ALIVE_S
    config.backlog = BACKLOG
    await serve(app, config, shutdown_trigger=stop.wait)


def finish_reading_requests(app: Quart) -> None:
    """Read whatever of a request's body a response left unread (a 405, a 404, a check
    that failed before the body mattered), so the connection can carry the next request.

    Unread, the body was still on the connection when the response ended: hypercorn then
    closed the connection without saying so (no ``Connection: close``), and a client that
    reused it lost its next request ("Server disconnected without sending a response";
    aiohttp's pool to the coordinator and nginx's upstream keep-alive reuse connections
    the same way). A body that cannot be read in time, or is over the size limit, closes
    the connection, saying so. Pass a Quart app."""

    @app.after_request
    async def _finish_reading(response: Response) -> Response:
        try:
            async with asyncio.timeout(BODY_READ_S):
                await request.get_data()
        except (TimeoutError, HTTPException):  # too slow or too large: this connection ends
            response.headers["Connection"] = "close"
        return response


async def request_json(request: Any) -> Any:
    """The request body as JSON, or None when it is not JSON: malformed, not UTF-8, a lone
    surrogate (valid to Python's ``json``, then unstorable and unsendable: a 500 later),
    NaN or Infinity. Quart's own ``get_json(silent=True)`` raises on invalid UTF-8. The
    same parser as MQTT payloads (pydantic's). Pass Quart's ``request``."""
    raw = await request.get_data()
    try:
        return from_json(raw, allow_inf_nan=False)
    except ValueError:
        return None
