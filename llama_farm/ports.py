"""Picking a free local port for the services `llama-farm dev` (and the tests) start."""

import contextlib
import random
import socket
from pathlib import Path

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral() -> tuple[int, int]:
    with contextlib.suppress(OSError, ValueError):
        low, high = (int(p) for p in _RANGE.read_text().split())
        return low, high
    return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now, outside the kernel's ephemeral range: the ports
    the kernel hands to outgoing connections, which could otherwise take the port between
    this check and the service's bind (seen as "address already in use" under load)."""
    low, high = _ephemeral()
    pool = range(20000, low) if low > 21000 else range(high + 1, 65536)
    for _ in range(100):
        port = random.choice(pool)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        found: int = s.getsockname()[1]
        return found
