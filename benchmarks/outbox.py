"""The outbox over a long link: QoS1 publishes per second from one client to Mosquitto
through a proxy that delays every byte (a worker at home, the broker in a data centre),
one in flight at a time (the outbox before 2026-11-29: each publish waited for the one
before it to be acknowledged) against the window of 20, side by side in one run."""

import asyncio
import contextlib
import time

import aiomqtt

from farm_runtime.broker import make_client, serve_session
from farm_runtime.outbox import WINDOW, Outbox
from tests.support.brokers import RunningBroker, mosquitto
from tests.support.tcp_proxy import tcp_proxy

TOPIC = "farm/bench/outbox"
# A chunk as a worker publishes it: the JobChunk JSON of a few words.
PAYLOAD = (
    b'{"kind":"chunk","job_id":"0123456789abcdef0123456789abcdef","attempt":1,'
    b'"seq":17,"text":" the quick brown fox jumps over"}'
)
CHUNKS_PER_STREAM_S = 15.0  # a 30-token/s stream under the chunk rule (see The chunk rule)
ONE_WAY_DELAYS_S = (0.0, 0.010, 0.050)
SECONDS_PER_RUN = 2.0


async def ignore(message: aiomqtt.Message) -> None:
    return None


async def rate(broker: RunningBroker, delay_s: float, window: int) -> float:
    """Acknowledged publishes per second, over about SECONDS_PER_RUN."""
    async with (
        tcp_proxy(broker.port, delay_s) as proxy,
        make_client(broker.settings(), identifier="bench-listener") as listener,
    ):
        await listener.subscribe(TOPIC, qos=1)
        url = f"mqtt://127.0.0.1:{proxy.port}"
        sender = make_client(broker.settings().model_copy(update={"url": url}), identifier="bench")
        outbox = Outbox(window=window)
        async with sender:
            session = asyncio.create_task(
                serve_session(sender, subscriptions=[], handle=ignore, outbox=outbox)
            )
            # Enough for the run at the rate one round trip per publish would allow, and
            # many more when they can go out side by side.
            count = max(20, int(SECONDS_PER_RUN * window / max(2 * delay_s, 0.001)))
            count = min(count, 4000)
            started = time.perf_counter()
            for _ in range(count):
                await outbox.put(TOPIC, PAYLOAD, qos=1)
            assert await outbox.drained(120), "the outbox did not drain"
            elapsed = time.perf_counter() - started
            session.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session
        received = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                async for _ in listener.messages:
                    received += 1
                    if received == count:
                        break
        assert received == count, f"{received} of {count} publishes arrived"
        return count / elapsed


async def measure() -> list[tuple[float, float, float]]:
    """[(one-way delay, publishes/s one at a time, publishes/s with the window)]."""
    rows = []
    async with mosquitto() as broker:
        for delay_s in ONE_WAY_DELAYS_S:
            serial = await rate(broker, delay_s, 1)
            windowed = await rate(broker, delay_s, WINDOW)
            rows.append((delay_s, serial, windowed))
    return rows


def main() -> str:
    print("\nOutbox: QoS1 publishes/s from one client through a delaying proxy, Mosquitto")
    lines = [
        "| round trip to the broker | publishes/s, one in flight | streams one worker can "
        f"carry | publishes/s, {WINDOW} in flight | streams | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for delay_s, serial, windowed in asyncio.run(measure()):
        lines.append(
            f"| {2 * delay_s * 1000:.0f} ms (+ proxy) | {serial:,.0f} "
            f"| {serial / CHUNKS_PER_STREAM_S:,.0f} | {windowed:,.0f} "
            f"| {windowed / CHUNKS_PER_STREAM_S:,.0f} | {windowed / serial:.1f}x |"
        )
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
