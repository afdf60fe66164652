"""The MQTT subscriptions a webapp holds: only what its own browsers and API clients watch.

A thread's events are subscribed to while someone here watches the thread, and a job's
live chunks and progress while its thread is watched and the job has not ended. So N
webapps behind a load balancer divide the fan-out instead of each receiving the whole
farm's. A subscription is made once and awaited (its SUBACK: from then on nothing
published to it is missed), and dropped ``linger_s`` after its last watcher left (a page
reloading comes back at once, and finds it still in place)."""

import asyncio
import logging
import time

import aiomqtt

from farm_runtime.client_calls import subscribe, unsubscribe

log = logging.getLogger(__name__)


class Interest:
    def __init__(self, linger_s: float = 10.0) -> None:
        self.linger_s = linger_s
        self._qos: dict[str, int] = {}
        self._client: aiomqtt.Client | None = None
        self._made: dict[str, asyncio.Future[None]] = {}  # topic -> its subscription
        self._unused_since: dict[str, float] = {}  # released topics, not yet dropped

    def topics(self) -> set[str]:
        """The filters subscribed to (or being subscribed to) now."""
        return set(self._made)

    def connected(self, client: aiomqtt.Client | None) -> None:
        """A new session (a clean one: it holds nothing): make every subscription again."""
        self._client = client
        wanted = [t for t in self._made if t not in self._unused_since]
        self._made.clear()
        self._unused_since.clear()
        for topic in wanted:
            self._made[topic] = asyncio.ensure_future(self._subscribe(topic, self._qos[topic]))

    def disconnected(self) -> None:
        self._client = None

    async def want(self, topic: str, qos: int) -> None:
        """Subscribe to ``topic`` unless subscribed already; return once it is in place."""
        self._unused_since.pop(topic, None)
        self._qos[topic] = qos
        made = self._made.get(topic)
        if made is None or (made.done() and made.exception() is not None):
            made = self._made[topic] = asyncio.ensure_future(self._subscribe(topic, qos))
        await asyncio.shield(made)

    def release(self, topic: str) -> None:
        """Nobody here needs ``topic`` now: dropped after the linger unless wanted again."""
        if topic in self._made:
            self._unused_since.setdefault(topic, time.monotonic())

    async def reap(self) -> None:
        """Drop the subscriptions released longer than the linger ago."""
        now = time.monotonic()
        stale = [t for t, since in self._unused_since.items() if now - since >= self.linger_s]
        for topic in stale:
            del self._unused_since[topic]
            self._made.pop(topic, None)
            self._qos.pop(topic, None)
            client = self._client
            if client is not None:
                try:
                    await unsubscribe(client, topic)
                except aiomqtt.MqttError as exc:
                    log.info("could not unsubscribe from %s: %s", topic, exc)

    async def _subscribe(self, topic: str, qos: int) -> None:
        client = self._client
        if client is None:
            return  # not connected: made again by the next session (see connected)
        if not await subscribe(client, topic, qos=qos):
            raise aiomqtt.MqttError(f"the broker refused the subscription to {topic}")
