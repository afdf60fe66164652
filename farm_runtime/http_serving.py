"""Serving an ASGI app (Quart) with hypercorn until a stop event.

Only the services with an HTTP side import this (hypercorn is not a worker dependency).
"""

import asyncio
import logging
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from pydantic_core import from_json

# An idle keep-alive connection is kept this long. It must outlast the clients' own
# expiry, so that it is always the client that closes it: httpx (the OpenAI SDK, and the
# webapp's client of the coordinator) keeps one 5 s, hypercorn's default, and the two
# closing at the same moment dropped a request now and then under load (a client sends on
# a connection the server is closing: RemoteProtocolError or ReadError). 75 s as nginx.
KEEP_ALIVE_S = 75
# Connections waiting to be accepted (hypercorn's default 100 overflowed when hundreds of
# clients connected at once; the kernel caps it at net.core.somaxconn).
BACKLOG = 1024


async def serve_app(app: Any, host: str, port: int, stop: asyncio.Event) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = KEEP_ALIVE_S
    config.backlog = BACKLOG
    await serve(app, config, shutdown_trigger=stop.wait)


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
