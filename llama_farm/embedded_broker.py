"""The embedded amqtt broker of ``llama-farm dev``: zero install, MQTT 3.1.1 only.

Fine for one machine in development; production uses Mosquitto (see ``mosquitto/``).
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from amqtt.broker import Broker

log = logging.getLogger(__name__)


def broker_config(port: int, host: str = "127.0.0.1") -> dict[str, object]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


@contextlib.asynccontextmanager
async def embedded_broker(port: int, host: str = "127.0.0.1") -> AsyncIterator[Broker]:
    broker = Broker(broker_config(port, host))
    await broker.start()
    log.info("embedded amqtt broker listening on mqtt://%s:%d", host, port)
    try:
        yield broker
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(broker.shutdown(), timeout=5)
