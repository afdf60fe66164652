"""Stopping what talks to the broker, on a real Mosquitto: a stop (the task cancelled)
always ends it.

- ``stay_connected`` when leaving the connection fails: a worker stopped while its link
  to the broker stalls with data unsent (a laptop's Wi-Fi) cannot deliver its
  DISCONNECT; aiomqtt then raises ``MqttError`` in place of the cancellation, and a
  reconnect loop that caught it would go on instead of stopping (until systemd killed
  the service).
- A loop that publishes (heartbeats) when the stop arrives with the broker's PUBACK: with
  aiomqtt's own time limit (``asyncio.wait_for`` on CPython 3.11, gh-86296) the publish
  returned normally and the loop went on; the worker's shutdown waited for it forever.
- ``stay_connected`` stopped while it connects (waiting for the CONNACK): aiomqtt left
  paho's socket open, and when the broker closed it, an event-loop callback raised
  (a traceback at the end of ``llama-farm dev``, seen in CI).
"""

import asyncio
import contextlib
from typing import Any

import aiomqtt

from farm_runtime.broker import make_client, stay_connected
from farm_runtime.client_calls import publish
from tests.support.brokers import broker_of
from tests.support.tcp_proxy import tcp_proxy


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


async def test_a_stop_that_arrives_with_the_puback_ends_a_publishing_loop() -> None:
    async with (
        broker_of("mosquitto") as broker,
        make_client(broker.settings(), identifier="beating") as client,
    ):
        beating: asyncio.Task[None] | None = None
        beats = 0
        confirm = client._client.on_publish  # aiomqtt's: it sets the call's confirmation
        assert confirm is not None

        def confirm_then_stop(*args: Any) -> None:
            confirm(*args)
            if beats == 3 and beating is not None:
                beating.cancel()  # the stop arrives in the same moment

        client._client.on_publish = confirm_then_stop

        async def heartbeats() -> None:
            nonlocal beats
            while True:
                beats += 1
                await publish(client, "farm/test/beat", b"beat", qos=1)

        beating = asyncio.create_task(heartbeats())
        done, _ = await asyncio.wait({beating}, timeout=5)
        assert done, f"the loop went on after it was stopped ({beats} beats)"
        assert beating.cancelled()
        assert beats == 3


async def test_a_stop_while_connecting_leaves_nothing_behind() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        async with broker_of("mosquitto") as broker, tcp_proxy(broker.port) as proxy:
            proxy.cut(to_broker=False)  # the CONNACK never comes
            settings = broker.settings().model_copy(
                update={"url": f"mqtt://127.0.0.1:{proxy.port}"}
            )
            closed = asyncio.Event()

            def connect() -> aiomqtt.Client:
                client = make_client(settings, identifier="cancelled-connect")
                release = client._client.on_socket_close  # aiomqtt's: it stops watching it
                assert release is not None

                def on_socket_close(*args: Any) -> None:
                    release(*args)
                    closed.set()

                client._client.on_socket_close = on_socket_close
                return client

            async def session(_client: aiomqtt.Client) -> None:
                raise AssertionError("connected through a cut")

            task = asyncio.create_task(stay_connected(connect, session, name="connect test"))
            await asyncio.wait_for(proxy.holding.wait(), 10)  # CONNECT sent, CONNACK held
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
            assert done
            assert task.cancelled()
            proxy.sever()  # and the broker's side closes the connection
            await asyncio.wait_for(closed.wait(), 5)
    finally:
        loop.set_exception_handler(None)
    assert errors == []
