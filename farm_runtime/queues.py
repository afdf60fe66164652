"""Waiting for a queue's next item with a time limit, without losing a cancellation.

``asyncio.wait_for(queue.get(), t)`` on CPython 3.11 returns the item instead of raising
when the task is cancelled in the same moment the item arrives (gh-86296): the
cancellation is lost and the task goes on. Seen here: a worker told to stop a job took
its next token in that moment and went on generating the reply nobody would see, its
Ollama stream open. ``asyncio.timeout`` awaits the queue in the task itself, so a
cancellation always lands (and the item stays in the queue)."""

import asyncio
from typing import TypeVar

T = TypeVar("T")


async def get_within(queue: "asyncio.Queue[T]", timeout_s: float | None) -> T:
    """The queue's next item; TimeoutError after ``timeout_s`` (None: no limit)."""
    if timeout_s is None:  # awaited in the task itself as well; no timer to arm
        return await queue.get()
    async with asyncio.timeout(timeout_s):
        return await queue.get()
