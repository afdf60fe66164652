"""The paced MQTT client (farm_runtime.paced_reads) on real brokers, through a proxy the
test controls: messages that come together are read together, in order and complete; a
connection that breaks while the client pauses is noticed, and the same client connects
again and reads. (That a lone message is read when it comes, not after a pause, is a
matter of delay: benchmarks/capacity.py measures it.)"""

import asyncio
import contextlib

import aiomqtt
import pytest

from farm_runtime.broker import make_client
from farm_runtime.paced_reads import PacedClient
from tests.support.brokers import RunningBroker
from tests.support.tcp_proxy import tcp_proxy

TOPIC = "farm/test/paced"


async def _next(client: aiomqtt.Client, timeout_s: float = 10.0) -> bytes:
    async def first() -> bytes:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            return message.payload
        raise AssertionError("the messages ended")

    return await asyncio.wait_for(first(), timeout_s)


async def test_messages_that_come_together_are_read_together_in_order(
    broker: RunningBroker,
) -> None:
    async with (
        tcp_proxy(broker.port) as proxy,
        make_client(broker.settings(), identifier="paced-sender") as sender,
    ):
        via_proxy = broker.settings().model_copy(update={"url": f"mqtt://127.0.0.1:{proxy.port}"})
        async with make_client(via_proxy, identifier="paced-burst", read_pause_s=0.2) as paced:
            assert isinstance(paced, PacedClient)
            await paced.subscribe(TOPIC, qos=0)
            # The broker's 300 messages are held in the proxy, then come all at once.
            proxy.cut(to_broker=False)
            for n in range(300):
                await sender.publish(TOPIC, str(n).encode(), qos=1)
            rounds = paced.read_rounds
            proxy.restore()
            got = [int(await _next(paced)) for _ in range(300)]
            assert got == list(range(300))
            # read in a handful of rounds, not one wake-up per message
            assert paced.read_rounds - rounds <= 10
            assert paced.packets_read >= 300


async def test_a_connection_broken_during_the_pause_is_noticed_and_reconnects(
    broker: RunningBroker,
) -> None:
    async with (
        tcp_proxy(broker.port) as proxy,
        make_client(broker.settings(), identifier="paced-sender") as sender,
    ):
        via_proxy = broker.settings().model_copy(update={"url": f"mqtt://127.0.0.1:{proxy.port}"})
        client = make_client(via_proxy, identifier="paced-broken", read_pause_s=0.5)
        assert isinstance(client, PacedClient)
        with contextlib.suppress(aiomqtt.MqttError):
            async with client:
                await client.subscribe(TOPIC, qos=1)
                await sender.publish(TOPIC, b"before", qos=1)
                assert await _next(client) == b"before"  # and now it pauses
                proxy.sever()
                with pytest.raises(aiomqtt.MqttError):
                    await _next(client)
        # The same client again, as the services' reconnect loop does.
        async with client:
            await client.subscribe(TOPIC, qos=1)
            await sender.publish(TOPIC, b"after", qos=1)
            assert await _next(client) == b"after"
