"""How every service reaches the broker: settings, client construction, reconnect loop.

The loop follows the pattern verified on this platform: reuse one ``aiomqtt.Client`` and
re-enter it after an ``MqttError``, with exponential back-off and jitter. Refused
credentials are final: they stop the loop with :class:`BrokerAuthError`.
"""

import asyncio
import logging
import random
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from farm_runtime.client_calls import TIMEOUT_S, subscribe
from farm_runtime.outbox import WINDOW, Outbox

log = logging.getLogger(__name__)

# CONNACK codes meaning "your credentials are not accepted": 3.1.1 (4, 5) and 5.0 (134, 135).
_AUTH_CODES = frozenset({4, 5, 134, 135})


class BrokerAuthError(Exception):
    """The broker refused our credentials; retrying cannot help."""


class BrokerSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: SecretStr | None = None
    # MQTT keepalive: a dead connection (a network cut) is noticed after 1.5x this, by the
    # client and by the broker (which then publishes the client's Last Will).
    keepalive: int = Field(default=15, ge=1, le=600)
    ca_file: str | None = None  # for mqtts:// with a private CA


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
        raise ValueError(f"broker URL must look like mqtt://host:1883 or mqtts://host:8883: {url}")
    tls = parts.scheme in ("mqtts", "ssl")
    return BrokerAddress(parts.hostname, parts.port or (8883 if tls else 1883), tls)


def make_client(
    settings: BrokerSettings,
    *,
    identifier: str,
    will: aiomqtt.Will | None = None,
    clean_session: bool = True,
    max_queued_incoming: int | None = None,
    deliver: Callable[[aiomqtt.Message], None] | None = None,
) -> aiomqtt.Client:
    """An MQTT 3.1.1 client (the common ground of amqtt and Mosquitto).

    With ``deliver``, each message is handed to it as it is read, in order, instead of
    waiting in the client's queue for ``client.messages`` (see :func:`delivering`); the
    session then only waits on ``client.messages`` for the connection to end."""
    address = parse_broker_url(settings.url)
    tls_context = None
    if address.tls:
        tls_context = ssl.create_default_context(cafile=settings.ca_file)
    client = aiomqtt.Client(
        address.host,
        address.port,
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None,
        identifier=identifier,
        will=will,
        clean_session=clean_session,
        keepalive=settings.keepalive,
        tls_context=tls_context,
        max_queued_incoming_messages=max_queued_incoming,
        queue_type=delivering(deliver) if deliver is not None else None,
        timeout=TIMEOUT_S,  # connecting and leaving; publishes and subscribes: client_calls
        # No Nagle: a small publish right behind another (an "accepted", then the first
        # chunk) would otherwise wait for the first one's TCP ACK, up to the peer's 40 ms
        # delayed-ACK timer. Measured: 48 ms from assignment to "accepted", now 7 ms.
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
    # aiomqtt warns past 10 unacknowledged calls; the outbox keeps WINDOW publishes in
    # flight on purpose, so only more than that (and a few subscribes) is worth a warning.
    client.pending_calls_threshold = WINDOW + 10
    return client


def delivering(
    deliver: Callable[[aiomqtt.Message], None],
) -> type["asyncio.Queue[aiomqtt.Message]"]:
    """An incoming-message queue for aiomqtt (its ``queue_type``) that queues nothing: it
    hands each message to ``deliver`` as the client reads it. Reading
    ``client.messages`` costs a task and an ``asyncio.wait`` per message, and a wake-up
    of the consuming task: in a side-by-side measurement at 4,000 and 15,000 messages a
    second (docs/PERFORMANCE.md, Capacity), a subscriber spent 184-199 and 138 us of CPU
    per message that way, 126 and 80 us delivered. For a handler that never waits (the
    webapp's bridge); whatever it raises is logged and the message dropped, as
    :func:`serve_session` does."""

    def safely(message: aiomqtt.Message) -> None:
        try:
            deliver(message)
        except Exception:
            log.exception("dropped a message on %s", message.topic.value)

    class Delivering(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            safely(item)

    return Delivering


def is_auth_failure(exc: aiomqtt.MqttError) -> bool:
    rc = getattr(exc, "rc", None)
    value = getattr(rc, "value", rc)
    return isinstance(value, int) and value in _AUTH_CODES


Session = Callable[[aiomqtt.Client], Awaitable[None]]


async def stay_connected(
    connect: Callable[[], aiomqtt.Client],
    session: Session,
    *,
    name: str,
    backoff_min: float = 0.2,
    backoff_max: float = 15.0,
) -> None:
    """Run ``session(client)`` inside a connection, reconnecting until cancelled (and a
    cancellation always ends it, even when leaving the connection fails).

    ``connect`` makes the client for each attempt (a worker's Last Will names the session,
    so each connection gets a fresh one). ``session`` subscribes and consumes messages;
    when it returns the loop ends.
    """
    backoff = backoff_min
    while True:
        client = connect()
        entered = False
        try:
            async with client:
                entered = True
                log.info("%s connected to the broker", name)
                backoff = backoff_min
                await session(client)
                return
        except aiomqtt.MqttError as exc:
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                # Stopped, and leaving the connection failed (a stalled link could not
                # take the DISCONNECT): aiomqtt raised this in place of the cancellation.
                raise asyncio.CancelledError from exc
            if is_auth_failure(exc):
                raise BrokerAuthError(
                    f"{name}: the broker refused our credentials ({exc})"
                ) from exc
            delay = backoff * (0.5 + random.random())
            log.warning("%s lost the broker (%s); reconnecting in %.1fs", name, exc, delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, backoff_max)
        except asyncio.CancelledError:
            if not entered:
                _abandon(client)
            raise


def _abandon(client: aiomqtt.Client) -> None:
    """Let go of a connection cancelled while it was being opened (a service stopping as
    it reconnects). aiomqtt leaves paho's socket open then; when the broker closes it,
    aiomqtt's on_disconnect reads the cancelled CONNACK future and raises in an event-loop
    callback (a traceback at shutdown, seen in CI). Say DISCONNECT without it instead."""
    paho = client._client  # aiomqtt offers no way to abort a connect
    paho.on_connect = None
    paho.on_disconnect = None
    paho.disconnect()


Handler = Callable[[aiomqtt.Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Subscription:
    """A filter to subscribe to, and the one to use instead if the broker refuses it (a
    shared subscription on a broker without them)."""

    topic: str
    qos: int
    fallback: str | None = None
    # A refusal is logged and the session goes on without it (a grant an older broker
    # setup lacks, which the coordinator adds at its next reconcile)
    optional: bool = False


async def subscribe_all(client: aiomqtt.Client, subscriptions: list[Subscription]) -> None:
    for sub in subscriptions:
        if await subscribe(client, sub.topic, qos=sub.qos):
            continue
        if sub.optional:
            log.warning("the broker refused %s; going on without it", sub.topic)
            continue
        if sub.fallback is None:
            raise aiomqtt.MqttError(f"the broker refused the subscription to {sub.topic}")
        log.info("the broker refused %s; subscribing to %s instead", sub.topic, sub.fallback)
        if not await subscribe(client, sub.fallback, qos=sub.qos):
            raise aiomqtt.MqttError(f"the broker refused the subscription to {sub.fallback}")


async def serve_session(
    client: aiomqtt.Client,
    *,
    subscriptions: list[Subscription],
    handle: Handler | None,
    outbox: Outbox | None = None,
    on_subscribed: Callable[[], None] | None = None,
) -> None:
    """One connected session: subscribe, pump the outbox, hand each message to ``handle``
    (None: the client delivers them itself, see :func:`make_client`, and this waits for
    the connection to end). ``on_subscribed`` is called once the subscriptions are in
    place.

    ``handle`` validates and acts; whatever it raises is logged and the message dropped:
    one bad message never ends the loop.
    """
    pump = asyncio.create_task(outbox.pump(client), name="outbox") if outbox else None
    try:
        await subscribe_all(client, subscriptions)
        if on_subscribed is not None:
            on_subscribed()
        async for message in client.messages:
            if handle is None:
                continue  # not queued by a delivering client: nothing comes here
            try:
                await handle(message)
            except Exception:
                log.exception("dropped a message on %s", message.topic.value)
    finally:
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
