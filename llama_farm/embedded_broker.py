"""The embedded amqtt broker of ``llama-farm dev``: zero install, MQTT 3.1.1 only.

Fine for one machine in development; production uses Mosquitto (see ``mosquitto/``).
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from amqtt.broker import Broker

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FarmAuth:
    """Check logins against the farm: workers' keys in this database; other accounts
    (the services) by these passwords. ``extra_grants`` gives accounts that are not
    services publish and subscribe rights on these filters (tests use it)."""

    database_url: str
    passwords: dict[str, str]
    extra_grants: dict[str, list[str]] = field(default_factory=dict)


def broker_config(
    port: int, host: str = "127.0.0.1", auth: FarmAuth | None = None
) -> dict[str, object]:
    plugins: dict[str, object]
    if auth is None:
        plugins = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
    else:
        plugins = {
            "llama_farm.broker_plugins.FarmAuthPlugin": {
                "database_url": auth.database_url,
                "passwords": auth.passwords,
            },
            "llama_farm.broker_plugins.FarmTopicPlugin": {"extra_grants": auth.extra_grants},
        }
    return {"listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}}, "plugins": plugins}


class _SnapshotDict(dict[Any, Any]):
    """amqtt 0.12.1 iterates its subscription table across ``await``s (sending retained
    messages to a new session, broadcasting) while other clients' subscriptions change
    it: "RuntimeError: dictionary changed size during iteration" kills that client's
    session (seen as a worker that never comes online, about one test run in ten).
    Iterating a snapshot is what that code means."""

    def __iter__(self) -> Iterator[Any]:
        return iter(list(dict.keys(self)))

    def items(self) -> Any:
        return list(dict.items(self))


@contextlib.asynccontextmanager
async def embedded_broker(
    port: int, host: str = "127.0.0.1", auth: FarmAuth | None = None
) -> AsyncIterator[Broker]:
    broker = Broker(broker_config(port, host, auth))
    broker._subscriptions = _SnapshotDict()
    await broker.start()
    log.info("embedded amqtt broker listening on mqtt://%s:%d", host, port)
    try:
        yield broker
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(broker.shutdown(), timeout=5)
