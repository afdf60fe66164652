"""A client that delivers each message as it is read (the webapp's, ``make_client``'s
``deliver``), on a real Mosquitto: every message reaches the handler in the order it was
published; one the handler fails on is logged and dropped, and the next still comes; and
when the connection breaks, the session ends with ``MqttError`` (the reconnect loop's
cue), as a session reading ``client.messages`` does."""

import asyncio

import aiomqtt
import pytest

from farm_runtime.broker import Subscription, make_client, serve_session
from farm_runtime.client_calls import publish
from tests.support.brokers import broker_of
from tests.support.tcp_proxy import tcp_proxy

TOPIC = "farm/v2/test/delivery"


async def test_delivered_in_order_past_a_failure_until_the_connection_breaks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[bytes] = []
    last = asyncio.Event()

    def deliver(message: aiomqtt.Message) -> None:
        assert isinstance(message.payload, bytes)
        if message.payload == b"bad":
            raise ValueError("a handler failing on one message")
        seen.append(message.payload)
        if message.payload == b"99":
            last.set()

    async with broker_of("mosquitto") as broker, tcp_proxy(broker.port) as proxy:
        via_proxy = broker.settings().model_copy(update={"url": f"mqtt://127.0.0.1:{proxy.port}"})
        subscribed = asyncio.Event()
        async with (
            make_client(via_proxy, identifier="delivered", deliver=deliver) as client,
            make_client(broker.settings(), identifier="publisher") as publisher,
        ):
            session = asyncio.create_task(
                serve_session(
                    client,
                    subscriptions=[Subscription(TOPIC, 1)],
                    handle=None,
                    on_subscribed=subscribed.set,
                )
            )
            await subscribed.wait()
            for n in range(100):
                await publish(publisher, TOPIC, str(n) if n != 50 else "bad", qos=1)
            await asyncio.wait_for(last.wait(), 30)
            assert seen == [str(n).encode() for n in range(100) if n != 50]
            assert f"dropped a message on {TOPIC}" in caplog.text
            assert not session.done()  # the failure did not end it

            proxy.sever()  # as a broker restart does
            with pytest.raises(aiomqtt.MqttError):
                await asyncio.wait_for(session, 30)
