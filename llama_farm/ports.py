"""Picking a free local port for the services `llama-farm dev` (and the tests) start."""

import contextlib
import os
import random
import re
import socket
from collections import deque
from pathlib import Path

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# The ports this process handed out lately: a caller often asks for several before it
# binds any (a farm's simulator, coordinator and webapp), and a port probed free but not
# yet bound would be found free again.
_GIVEN: deque[int] = deque(maxlen=1024)


def _ephemeral() -> tuple[int, int]:
    with contextlib.suppress(OSError, ValueError):
        low, high = (int(p) for p in _RANGE.read_text().split())
        return low, high
    return 32768, 60999


def _pool() -> range:
    """The ports to pick from: outside the ephemeral range, above 20,000."""
    low, high = _ephemeral()
    return range(20000, low) if low > 21000 else range(high + 1, 65536)


def reserve(*ports: int) -> None:
    """Ports this process was told to bind (a ``--port`` option), not bound yet: never
    handed out by :func:`free_port` (seen: ``llama-farm dev --port P`` picking P again for
    one of its own services before its webapp bound it)."""
    _GIVEN.extend(port for port in ports if port)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now, outside the kernel's ephemeral range: the ports
    the kernel hands to outgoing connections, which could otherwise take the port between
    this check and the service's bind (seen as "address already in use" under load).

    Under pytest-xdist each test process picks from a slice of its own, and so do the
    services it starts (they inherit its environment): two processes probing at once
    could otherwise both find one port free, and both bind it later. Nor does one process
    get a port it was given lately (:data:`_GIVEN`)."""
    pool = _slice(_pool())
    for _ in range(100):
        port = random.choice(pool)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _GIVEN.append(port)
        return port
    with socket.socket() as s:
        s.bind((host, 0))
        found: int = s.getsockname()[1]
        return found


def _slice(pool: range) -> range:
    """This pytest-xdist worker's share of ``pool`` (gw0 the first of as many slices as
    there are workers); all of it outside pytest-xdist."""
    worker = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker is None or not count.isdigit() or int(worker.group(1)) >= int(count):
        return pool
    size = len(pool) // int(count)
    return pool[int(worker.group(1)) * size :][:size]
