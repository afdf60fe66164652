"""One stream's chunk order (farm_runtime.chunks), as the coordinator's assembly, the
webapp's browsers and its OpenAI streams all use it: duplicates are dropped, chunks that
come early wait for the gap before them, and the gap is reported."""

import asyncio

from farm_protocol import topics
from farm_protocol.chat import MessageState
from farm_protocol.codec import encode
from farm_protocol.payloads import JobChunk
from farm_runtime.chunks import ChunkSequence
from tests.support.received import generating_reply, mqtt, thread_event
from webapp.bridge import Bridge
from webapp.coordinator_client import CoordinatorClient
from webapp.replies import Follow


def test_chunks_are_released_in_order_once_each() -> None:
    order = ChunkSequence()
    assert order.add(0, "a") == ["a"]
    assert order.add(2, "c") == []  # waits for 1
    assert order.gap() == 1
    assert order.has(2)
    assert order.add(2, "c") is None  # a duplicate, even while it waits
    assert order.add(1, "b") == ["b", "c"]
    assert order.add(0, "a") is None
    assert (order.next_seq, order.gap()) == (3, None)
    assert order.gap(expected=5) == 3  # a *done* said 5: chunks 3 and 4 are missing


def test_a_stored_text_raises_the_floor() -> None:
    order = ChunkSequence()
    order.add(5, "f")
    order.raise_floor(3)  # chunks 0-3 are in a stored text
    assert order.next_seq == 4
    assert order.add(2, "c") is None
    assert order.add(4, "e") == ["e", "f"]
    resumed = ChunkSequence(floor=9)  # resumed from a text holding chunks 0-9
    assert resumed.add(9, "x") is None
    assert resumed.add(10, "k") == ["k"]


async def test_an_openai_stream_gets_chunks_in_order_whatever_order_they_come_in() -> None:
    """A replay fills a gap late: the API client still gets the text in order (it used to
    skip a chunk that came after a later one)."""
    bridge = Bridge(queue_size=100)
    view = generating_reply("t1", "j1", "w1")
    nobody = CoordinatorClient("http://127.0.0.1:9", "token")  # the reply ends: no cancel
    reply = {"job_id": "j1", "message_id": "m1", "model": "llama3"}
    follow = Follow(bridge, nobody, await bridge.subscribe("t1"), reply, "key")
    bridge.handle(thread_event(view))
    pieces: list[str] = []

    async def read() -> None:
        async for kind, value in follow.events():
            if kind == "text":
                pieces.append(value)
            else:
                return

    reader = asyncio.create_task(read())
    await asyncio.sleep(0)  # subscribed
    for seq in (0, 2, 1, 2, 3):
        chunk = JobChunk(job_id="j1", attempt=1, seq=seq, text=f"{seq} ")
        bridge.handle(mqtt(topics.job_events("w1", "t1", "j1"), encode(chunk)))
    done = view.model_copy(update={"state": MessageState.DONE, "content": "0 1 2 3 "})
    bridge.handle(thread_event(done))
    await asyncio.wait_for(reader, 5)
    assert pieces == ["0 ", "1 ", "2 ", "3 "]
