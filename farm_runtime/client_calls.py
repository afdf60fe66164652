"""Publishing and subscribing without losing a cancellation.

aiomqtt limits each call with ``asyncio.wait_for``, which on CPython 3.11 returns normally
instead of raising when the task is cancelled in the same moment the call completes
(gh-86296; see also ``farm_runtime.queues``): the broker's PUBACK and a stop arriving
together lose the stop. A loop that publishes (a worker's heartbeats, its Ollama watch)
then goes on forever, and whatever waits for it to end (the service's shutdown) hangs;
seen in the test suite as a farm that did not stop. These calls ask aiomqtt for no limit
of its own (it then awaits the confirmation in the caller's task) and keep the limit
here, with ``asyncio.timeout``, so a cancellation always lands."""

import asyncio
import math

import aiomqtt

TIMEOUT_S = 10.0  # every call to the broker; make_client gives it to aiomqtt for the rest


async def publish(
    client: aiomqtt.Client,
    topic: str,
    payload: bytes | str,
    *,
    qos: int,
    retain: bool = False,
    timeout_s: float = TIMEOUT_S,
) -> None:
    """``client.publish``; ``MqttError`` if not confirmed within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=math.inf)
    except TimeoutError as exc:
        raise aiomqtt.MqttError(f"publish to {topic} not confirmed in {timeout_s:g} s") from exc


async def subscribe(
    client: aiomqtt.Client, topic: str, *, qos: int, timeout_s: float = TIMEOUT_S
) -> bool:
    """``client.subscribe``: True if the broker granted it, False if it refused (a SUBACK
    failure code); ``MqttError`` if not confirmed within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            granted = await client.subscribe(topic, qos=qos, timeout=math.inf)
    except TimeoutError as exc:
        raise aiomqtt.MqttError(f"subscribe to {topic} not confirmed in {timeout_s:g} s") from exc
    return all(_code(g) < 0x80 for g in granted or ())


async def unsubscribe(client: aiomqtt.Client, topic: str, *, timeout_s: float = TIMEOUT_S) -> None:
    """``client.unsubscribe``; ``MqttError`` if not confirmed within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            await client.unsubscribe(topic, timeout=math.inf)
    except TimeoutError as exc:
        raise aiomqtt.MqttError(f"unsubscribe {topic} not confirmed in {timeout_s:g} s") from exc


def _code(granted: object) -> int:
    value = getattr(granted, "value", granted)
    return value if isinstance(value, int) else 0x80
