"""The outbox on a real broker, reached through a proxy the test controls: publishes go
out side by side (not one PUBACK round trip each), in order, and what was unacknowledged
when the connection broke is sent again on the next one."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiomqtt

from farm_runtime.broker import make_client, serve_session, stay_connected
from farm_runtime.outbox import Outbox
from tests.support.brokers import RunningBroker
from tests.support.farm import wait_until
from tests.support.tcp_proxy import TcpProxy, tcp_proxy

TOPIC = "farm/test/outbox"
WINDOW = 8  # publishes in flight at once


@asynccontextmanager
async def received(broker: RunningBroker) -> AsyncIterator[list[int]]:
    """Every payload published on TOPIC, in arrival order, from a direct connection."""
    got: list[int] = []
    async with make_client(broker.settings(), identifier="outbox-listener") as listener:
        await listener.subscribe(TOPIC, qos=1)

        async def listen() -> None:
            async for message in listener.messages:
                assert isinstance(message.payload, bytes)
                got.append(int(message.payload))

        task = asyncio.create_task(listen())
        try:
            yield got
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@asynccontextmanager
async def pumping(broker: RunningBroker, outbox: Outbox) -> AsyncIterator[TcpProxy]:
    """The outbox pumped by a client that reaches the broker through a proxy, and
    reconnects as the services do."""
    async with tcp_proxy(broker.port) as proxy:
        settings = broker.settings().model_copy(update={"url": f"mqtt://127.0.0.1:{proxy.port}"})

        connected = asyncio.Event()

        async def session(client: aiomqtt.Client) -> None:
            await serve_session(
                client, subscriptions=[], handle=ignore, outbox=outbox, on_subscribed=connected.set
            )

        task = asyncio.create_task(
            stay_connected(
                lambda: make_client(settings, identifier="outbox-sender"),
                session,
                name="outbox test",
                backoff_min=0.05,
            )
        )
        try:
            # its session up (the CONNACK came back through the proxy), not only its TCP
            # connection: a cut before the CONNACK would hold it, and the sender would
            # never connect (seen under load: "lost the broker (Operation timed out)")
            await asyncio.wait_for(connected.wait(), 10)
            yield proxy
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def ignore(message: aiomqtt.Message) -> None:
    return None


async def put(outbox: Outbox, numbers: range) -> None:
    for n in numbers:
        await outbox.put(TOPIC, str(n).encode(), qos=1)


async def test_publishes_go_out_side_by_side_in_order(broker: RunningBroker) -> None:
    outbox = Outbox(window=WINDOW)
    async with received(broker) as got, pumping(broker, outbox) as proxy:
        proxy.cut(to_broker=False)  # the broker gets every publish; its PUBACKs are held
        await put(outbox, range(50))
        await wait_until(lambda: len(got) >= WINDOW, what="a window of publishes")
        await asyncio.sleep(0.3)  # none beyond the window goes out without a PUBACK
        assert got == list(range(WINDOW))
        assert outbox.pending() == 50

        proxy.restore()
        assert await outbox.drained(10)
        await wait_until(lambda: len(got) == 50, what="every publish")
        assert got == list(range(50))
        assert outbox.pending() == 0


async def test_what_was_unacknowledged_is_sent_again_after_a_reconnect(
    broker: RunningBroker,
) -> None:
    outbox = Outbox(window=WINDOW)
    async with received(broker) as got, pumping(broker, outbox) as proxy:
        await put(outbox, range(5))
        assert await outbox.drained(10)

        proxy.cut(to_broker=False)
        await put(outbox, range(5, 40))
        await wait_until(lambda: len(got) >= 5 + WINDOW, what="a window of publishes")
        proxy.sever()  # the connection breaks with a window's PUBACKs never seen
        proxy.restore()
        assert await outbox.drained(10)
        await wait_until(lambda: set(got) == set(range(40)), what="every publish")

    assert proxy.connections >= 2
    first_seen = list(dict.fromkeys(got))
    assert first_seen == list(range(40))  # in order; what was in flight came again first
    assert got[: 5 + WINDOW] == list(range(5 + WINDOW))
    assert got[5 + WINDOW : 5 + 2 * WINDOW] == list(range(5, 5 + WINDOW))
    assert outbox.pending() == 0


async def test_a_publish_the_client_refuses_is_dropped_and_the_rest_go_out(
    broker: RunningBroker,
) -> None:
    """paho refuses a topic with a wildcard (ValueError): sending it again cannot help, so
    it is logged and dropped instead of stopping the outbox."""
    outbox = Outbox(window=WINDOW)
    async with received(broker) as got, pumping(broker, outbox):
        await outbox.put("farm/test/#", b"-1", qos=1)
        await put(outbox, range(3))
        assert await outbox.drained(10)
        await wait_until(lambda: len(got) == 3, what="the rest")
        assert got == [0, 1, 2]
