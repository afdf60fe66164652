"""Running a service's named tasks until a stop event, and failing loudly if one dies."""

import asyncio
import contextlib
import errno
import gc
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class TaskCrashed(Exception):
    """A long-lived side task ended on its own; the service stops instead of limping on."""


async def run_until_stopped(
    tasks: dict[str, Coroutine[Any, Any, Any]], stop: asyncio.Event
) -> None:
    """Run the named coroutines until ``stop`` is set (clean) or one of them ends
    (crash: the others are cancelled and :class:`TaskCrashed` is raised)."""
    running = {asyncio.create_task(coro, name=name): name for name, coro in tasks.items()}
    stopper = asyncio.create_task(stop.wait(), name="stop")
    try:
        done, _ = await asyncio.wait([*running, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in [*running, stopper]:
            task.cancel()
        results = await asyncio.gather(*running, stopper, return_exceptions=True)
    if stop.is_set():
        return
    for task, result in zip(running, results, strict=False):
        if task in done:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise TaskCrashed(f"task {running[task]!r} failed: {result}") from result
            raise TaskCrashed(f"task {running[task]!r} ended unexpectedly")


def _quiet_closed_sockets(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Two harmless things asyncio would print as tracebacks while shutting down: a QoS1
    message arriving as an MQTT client disconnects makes paho schedule a write on a
    socket that is already closed; and the embedded broker, stopped while a client's
    connection is still being accepted, has CPython 3.11's stream callback read that
    cancelled task's exception (fixed in 3.12). Log them at debug level; leave the rest."""
    exc = context.get("exception")
    if (isinstance(exc, OSError) and exc.errno == errno.EBADF) or isinstance(
        exc, asyncio.CancelledError
    ):
        log.debug("ignored during shutdown: %s (%r)", context.get("message"), exc)
        return
    loop.default_exception_handler(context)


def settle_heap() -> None:
    """Take what exists so far (the imported modules, their classes and functions:
    50,000-67,000 objects in a service) out of the garbage collector's sight.

    A full collection walks every object the collector tracks, and stops the whole
    process meanwhile: in the running farm those pauses lasted up to 116-192 ms in the
    coordinator, the webapp and the simulator (2026-11-29, AMD EPYC), each one stalling
    every stream and request through the process. After ``gc.freeze()`` a full
    collection looks only at what was made since (docs/PERFORMANCE.md, The garbage
    collector). Frozen objects are still freed when nothing refers to them; only a cycle
    among them is never collected, which for code that lives as long as the process
    changes nothing. Call it when the imports are done; again later freezes what was
    made in between."""
    gc.collect()
    gc.freeze()


def run_with_signals(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(stop)`` in a fresh loop; SIGINT/SIGTERM set ``stop`` (graceful), and a
    second signal cancels at once. No traceback on Ctrl-C. The heap is settled first
    (:func:`settle_heap`)."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.current_task()

        def on_signal() -> None:
            if stop.is_set() and task is not None:
                task.cancel()
            stop.set()
            loop.set_exception_handler(_quiet_closed_sockets)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await main(stop)

    settle_heap()
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(runner())


async def run_services(services: dict[str, Coroutine[Any, Any, Any]], stop: asyncio.Event) -> None:
    """Run whole services side by side; each stops gracefully on its own when ``stop`` is
    set. If one fails, ``stop`` is set so the others wind down, then the failure is raised."""
    running = {asyncio.create_task(coro, name=name): name for name, coro in services.items()}
    failure: BaseException | None = None
    pending = set(running)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None and failure is None:
                failure = task.exception()
                log.error("%s failed: %s", running[task], failure)
        stop.set()  # one service ending (cleanly or not) ends them all
    if failure is not None:
        raise TaskCrashed(f"{failure}") from failure
