"""Bounded inputs: an oversized payload is dropped unread, a flood of made-up job ids does
not grow the webapp's memory, and the log says so once in a while, not once a message."""

import asyncio
import logging

import pytest

from farm_protocol import topics
from farm_protocol.codec import JOB_EVENT, decode, encode
from farm_protocol.errors import PayloadError
from farm_protocol.payloads import MAX_WORKER_MESSAGE_BYTES, JobChunk
from farm_runtime.logs import DropLog
from tests.support.received import mqtt
from webapp import bridge as bridge_module
from webapp.bridge import Bridge


def test_an_oversized_payload_is_refused_unread() -> None:
    chunk = JobChunk(job_id="j", attempt=1, seq=0, text="x" * 100)
    assert decode(JOB_EVENT, encode(chunk), MAX_WORKER_MESSAGE_BYTES) == chunk
    with pytest.raises(PayloadError, match="over the 524288 allowed"):
        decode(JOB_EVENT, b"{" + b" " * MAX_WORKER_MESSAGE_BYTES + b"}", MAX_WORKER_MESSAGE_BYTES)


def test_dropped_input_is_logged_once_in_a_while_per_source(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dropped = DropLog(logging.getLogger("test"), every_s=3600)
    with caplog.at_level(logging.WARNING):
        for n in range(450):
            dropped.warn("rogue", "dropped message %d", n)
        dropped.warn("other", "dropped message from another")
    assert [r.getMessage() for r in caplog.records] == [
        "dropped message 0",
        "dropped message from another",
    ]
    dropped.every_s = 0  # the next report says how many went unreported
    with caplog.at_level(logging.WARNING):
        dropped.warn("rogue", "dropped message %d", 450)
    assert caplog.records[-1].getMessage() == (
        "dropped message 450 (and 449 more dropped from rogue since the last report)"
    )


def test_a_flood_of_made_up_jobs_keeps_the_bridge_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chunks for job ids nobody spoke of wait for the coordinator to name their worker,
    but only so many jobs' and so many characters' worth."""
    monkeypatch.setattr(bridge_module, "_MAX_UNKNOWN_JOBS", 50)
    monkeypatch.setattr(bridge_module, "_MAX_UNVERIFIED_CHARS", 20_000)
    bridge = Bridge(queue_size=10)

    async def flood() -> None:
        for n in range(2000):
            chunk = JobChunk(job_id=f"j{n % 200}", attempt=1, seq=n, text="y" * 1000)
            bridge.handle(mqtt(topics.job_events("rogue", "t1", chunk.job_id), encode(chunk)))

    asyncio.run(flood())
    assert len(bridge._jobs) == 50
    assert bridge._unverified_chars <= 20_000
    held = sum(len(c.text) for s in bridge._jobs.values() for _, c in s.unverified)
    assert held == bridge._unverified_chars
    # the coordinator names one of them: it is known now, and its waiting chunks are
    # checked against the holder (a rogue's: dropped) and no longer held
    j0 = sum(len(c.text) for _, c in bridge._jobs["j0"].unverified)
    assert j0 > 0
    bridge.learn_holder("j0", "someone-else", 1)
    assert bridge._unverified_chars == held - j0
    assert bridge._unknown == 49
