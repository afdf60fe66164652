"""``stay_connected`` on a real broker reached through a proxy the test controls: a stop
(the task cancelled) ends it even when leaving the connection fails. A worker stopped
while its link to the broker stalls with data unsent (a laptop's Wi-Fi) cannot deliver
its DISCONNECT; aiomqtt then raises ``MqttError`` from leaving the connection, in place
of the cancellation, and a reconnect loop that caught it would go on instead of stopping
(until systemd killed the service)."""

import asyncio
import contextlib

import aiomqtt

from farm_protocol.broker import stay_connected
from tests.brokers import broker_of
from tests.tcp_proxy import tcp_proxy


async def test_a_stop_ends_it_even_when_the_link_has_stalled() -> None:
    async with broker_of("mosquitto") as broker, tcp_proxy(broker.port) as proxy:
        connected: asyncio.Queue[aiomqtt.Client] = asyncio.Queue()

        def connect() -> aiomqtt.Client:
            return aiomqtt.Client(
                "127.0.0.1",
                proxy.port,
                username=broker.username,
                password=broker.password,
                identifier="stalling",
                timeout=0.5,
            )

        async def session(client: aiomqtt.Client) -> None:
            connected.put_nowait(client)
            await asyncio.Event().wait()  # until stopped

        task = asyncio.create_task(stay_connected(connect, session, name="stall test"))
        client = await asyncio.wait_for(connected.get(), 10)
        proxy.cut()
        # Unsent data piles up behind the stalled link until the socket takes no more.
        for _ in range(40):
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish("farm/test/stall", b"x" * 1_000_000, qos=0, timeout=0.05)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, "stay_connected went on after it was stopped"
        assert task.cancelled()
