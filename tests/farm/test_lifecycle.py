"""The shutdown exception handler hides only writes on already-closed sockets."""

import asyncio
import errno
import subprocess
import sys
from typing import Any

import pytest

from farm_runtime.lifecycle import _quiet_closed_sockets


class RecordingLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self.reported: list[dict[str, Any]] = []

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.reported.append(context)


@pytest.fixture
def loop() -> Any:
    recording = RecordingLoop()
    yield recording
    recording.close()


def test_closed_socket_writes_are_quiet(loop: RecordingLoop) -> None:
    bad_fd = OSError(errno.EBADF, "Bad file descriptor")
    _quiet_closed_sockets(loop, {"message": "add_writer", "exception": bad_fd})
    assert loop.reported == []


def test_other_errors_still_reach_asyncio(loop: RecordingLoop) -> None:
    refused = {"message": "x", "exception": OSError(errno.ECONNREFUSED, "refused")}
    crash = {"message": "y", "exception": RuntimeError("boom")}
    _quiet_closed_sockets(loop, refused)
    _quiet_closed_sockets(loop, crash)
    assert loop.reported == [refused, crash]


def test_a_service_started_with_signals_has_settled_its_heap() -> None:
    """What the service imported is out of the collector's sight before it runs (see
    ``settle_heap``): in a fresh interpreter, as a service starts."""
    script = (
        "import asyncio, gc\n"
        "import coordinator.service\n"
        "from farm_runtime.lifecycle import run_with_signals\n"
        "async def main(stop: asyncio.Event) -> None:\n"
        "    print(gc.get_freeze_count())\n"
        "run_with_signals(main)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    frozen = int(out.stdout.strip())
    assert frozen > 10_000  # the coordinator's imports: tens of thousands of objects
