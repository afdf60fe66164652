"""The bridge fans one MQTT subscription set out to many browsers through bounded queues:
a browser that stops reading never holds up the others or the bridge itself; when its
queue is full it is marked to be sent back to a fresh snapshot (the websocket closes
with 4000 and the page reconnects), and it gets nothing more meanwhile."""

import asyncio

from farm_protocol import topics
from farm_protocol.browser import ChunkEvent
from farm_protocol.codec import encode
from farm_protocol.payloads import JobChunk
from tests.support.received import generating_reply, mqtt, thread_event
from webapp.bridge import Bridge


async def test_a_browser_that_stops_reading_holds_up_nobody() -> None:
    bridge = Bridge(queue_size=50)
    slow = bridge.subscribe("t1")  # never reads
    fast = bridge.subscribe("t1")
    await bridge.handle(thread_event(generating_reply("t1", "j1", "w1")))
    received: list[int] = []

    async def read_fast() -> None:
        while len(received) < 1000:
            event = await fast.queue.get()
            if isinstance(event, ChunkEvent):
                received.append(event.seq)

    reader = asyncio.create_task(read_fast())
    for seq in range(1000):
        chunk = JobChunk(job_id="j1", attempt=1, seq=seq, text=f"{seq} ")
        await bridge.handle(mqtt(topics.job_events("w1", "j1"), encode(chunk)))
        if seq % 10 == 0:
            await asyncio.sleep(0)  # let the fast browser read, as the event loop would
    await asyncio.wait_for(reader, timeout=5)  # a bridge waiting on the slow one would hang

    assert received == list(range(1000))  # every chunk, in order, to the reading browser
    assert slow.lagging  # the other is told to start again from a snapshot
    assert slow.queue.qsize() == 50  # and got nothing past its bound meanwhile
    assert not fast.lagging
    # The bridge still holds the whole stream for the slow browser's resync.
    assert len(bridge.chunks_after("j1", 1, -1)) == 1000
