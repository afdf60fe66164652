"""Serving an ASGI app (Quart) with hypercorn until a stop event.

Only the services with an HTTP side import this (hypercorn is not a worker dependency).
"""

import asyncio
import logging
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from pydantic_core import from_json


async def serve_app(app: Any, host: str, port: int, stop: asyncio.Event) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
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
