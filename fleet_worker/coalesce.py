"""Coalescing tokens into chunks: fewer messages, yet text appears promptly.

A chunk is cut when its oldest token has waited ``max_delay_s``, when it reaches
``max_chars``, or (optionally) when the buffer ends at one of ``delimiters``. The worker's
rule (50 ms or 100 characters, no delimiter cut) was picked with benchmarks/chunking.py.
"""

import time

DELIMITERS = ("\n", ".", "?", "!", ",")


class Coalescer:
    def __init__(
        self, max_delay_s: float, max_chars: int, delimiters: tuple[str, ...] = DELIMITERS
    ) -> None:
        self.max_delay_s = max_delay_s
        self.max_chars = max_chars
        self.delimiters = delimiters
        self._parts: list[str] = []
        self._size = 0
        self._since: float | None = None

    def add(self, token: str, now: float | None = None) -> str | None:
        """Buffer a token; return a chunk if one should go out now."""
        if not token:
            return None
        if self._since is None:
            self._since = time.monotonic() if now is None else now
        self._parts.append(token)
        self._size += len(token)
        ended = bool(self.delimiters) and token.rstrip(" ").endswith(self.delimiters)
        if self._size >= self.max_chars or ended:
            return self.take()
        return self.due(now)

    def due(self, now: float | None = None) -> str | None:
        """The buffered text if its oldest token has waited long enough."""
        if self._since is None:
            return None
        current = time.monotonic() if now is None else now
        return self.take() if current - self._since >= self.max_delay_s else None

    def wait_s(self, now: float | None = None) -> float | None:
        """How long until the buffer is due (None when empty)."""
        if self._since is None:
            return None
        current = time.monotonic() if now is None else now
        return max(0.0, self.max_delay_s - (current - self._since))

    def take(self) -> str | None:
        if not self._parts:
            return None
        text = "".join(self._parts)
        self._parts, self._size, self._since = [], 0, None
        return text
