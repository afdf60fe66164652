"""The bridge fans one MQTT subscription set out to many browsers through bounded queues:
a browser that stops reading never holds up the others or the bridge itself; when its
queue is full it is marked to be sent back to a fresh snapshot (the websocket closes
with 4000 and the page reconnects), and it gets nothing more meanwhile."""

import asyncio
import time

from farm_protocol import topics
from farm_protocol.browser import ChunkEvent
from farm_protocol.codec import encode
from farm_protocol.payloads import JobCheckpoint, JobChunk
from tests.support.received import generating_reply, mqtt, thread_event
from webapp.bridge import ABANDONED_S, RESYNC, Bridge


async def test_a_browser_that_stops_reading_holds_up_nobody() -> None:
    bridge = Bridge(queue_size=50)
    slow = await bridge.subscribe("t1")  # never reads
    fast = await bridge.subscribe("t1")
    bridge.handle(thread_event(generating_reply("t1", "j1", "w1")))
    received: list[int] = []

    async def read_fast() -> None:
        while len(received) < 1000:
            event = await fast.queue.get()
            if isinstance(event, ChunkEvent):
                received.append(event.seq)

    reader = asyncio.create_task(read_fast())
    for seq in range(1000):
        chunk = JobChunk(job_id="j1", attempt=1, seq=seq, text=f"{seq} ")
        bridge.handle(mqtt(topics.job_events("w1", "t1", "j1"), encode(chunk)))
        if seq % 10 == 0:
            await asyncio.sleep(0)  # let the fast browser read, as the event loop would
    await asyncio.wait_for(reader, timeout=5)  # a bridge waiting on the slow one would hang

    assert received == list(range(1000))  # every chunk, in order, to the reading browser
    assert slow.lagging  # the other is told to start again from a snapshot
    # and got nothing past its bound meanwhile, but the word to start again
    assert slow.queue.qsize() == 51
    held = [slow.queue.get_nowait() for _ in range(51)]
    assert held[-1] is RESYNC
    assert None not in held[:-1]
    assert not fast.lagging
    # The bridge still holds the whole stream for the slow browser's resync.
    assert len(bridge.chunks_after("j1", 1, -1)) == 1000


async def test_a_checkpoint_fills_what_a_webapp_did_not_see_live() -> None:
    """A webapp that started watching a thread mid-reply missed the chunks before: the
    next checkpoint (on the progress topic, which overlaps the one before) carries them.
    Those it saw live are not sent again, and a non-holder's checkpoint fills nothing."""
    bridge = Bridge(queue_size=100)
    sub = await bridge.subscribe("t1")
    bridge.handle(thread_event(generating_reply("t1", "j1", "w1")))
    for seq in (5, 6):  # chunks 0-4 went out before this webapp subscribed
        chunk = JobChunk(job_id="j1", attempt=1, seq=seq, text=f"{seq} ")
        bridge.handle(mqtt(topics.job_events("w1", "t1", "j1"), encode(chunk)))
    texts = [f"{seq} " for seq in range(7)]
    spoof = JobCheckpoint(job_id="j1", attempt=1, from_seq=0, texts=["EVIL"] * 7)
    bridge.handle(mqtt(topics.job_progress("rogue", "t1", "j1"), encode(spoof)))
    checkpoint = JobCheckpoint(job_id="j1", attempt=1, from_seq=0, texts=texts)
    bridge.handle(mqtt(topics.job_progress("w1", "t1", "j1"), encode(checkpoint)))
    sent = []
    while not sub.queue.empty():
        event = sub.queue.get_nowait()
        if isinstance(event, ChunkEvent):
            sent.append((event.seq, event.text))
    assert sent == [(5, "5 "), (6, "6 "), *((s, f"{s} ") for s in range(5))]
    assert [e.text for e in bridge.chunks_after("j1", 1, -1)] == texts


async def test_a_subscriber_nobody_reads_is_dropped_with_its_subscriptions() -> None:
    """An API client that hangs up before its streamed response begins never reads its
    subscriber: once events have waited unread for ABANDONED_S it is dropped, and the
    thread's subscriptions are released. A quiet browser (nothing waiting) is not."""
    bridge = Bridge(queue_size=100)
    quiet = await bridge.subscribe("t-quiet")
    gone = await bridge.subscribe("t1")
    bridge.handle(thread_event(generating_reply("t1", "j1", "w1")))
    long_ago = time.monotonic() - ABANDONED_S - 1
    quiet.read_at = gone.read_at = long_ago
    bridge.drop_abandoned()
    assert bridge.browsers() == 1
    assert topics.thread_events("t1") in bridge.interest.topics()  # held for the linger
    bridge.interest.linger_s = 0
    await bridge.interest.reap()
    assert topics.thread_events("t1") not in bridge.interest.topics()
    assert topics.thread_events("t-quiet") in bridge.interest.topics()
