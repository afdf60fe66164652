"""Serving an ASGI app (Quart) with hypercorn until a stop event.

Only the services with an HTTP side import this (hypercorn is not a worker dependency).
"""

import asyncio
import logging
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config


async def serve_app(app: Any, host: str, port: int, stop: asyncio.Event) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    await serve(app, config, shutdown_trigger=stop.wait)
