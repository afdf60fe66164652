"""A cancellation that lands in the same moment as the awaited item is not lost."""

import asyncio

import pytest

from farm_runtime.queues import get_within


async def test_a_cancel_in_the_same_moment_as_the_item_still_cancels() -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    waiting = asyncio.create_task(get_within(queue, 5.0))
    await asyncio.sleep(0)  # the task now waits on the queue
    queue.put_nowait("token")
    waiting.cancel()  # before the task has run again: the item and the cancel together
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert queue.get_nowait() == "token"  # and the item is still there, not lost


async def test_the_item_or_a_timeout() -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    with pytest.raises(TimeoutError):
        await get_within(queue, 0.01)
    queue.put_nowait("token")
    assert await get_within(queue, 0.01) == "token"
    queue.put_nowait("again")
    assert await get_within(queue, None) == "again"
