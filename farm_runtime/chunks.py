"""The order of one stream's chunks, by sequence number.

A job attempt's chunks are numbered from 0. QoS1 delivers each at least once and a
replay can fill a gap late, so a receiver sees duplicates and chunks out of order. A
:class:`ChunkSequence` knows which have arrived (every seq up to ``floor``, and those
waiting above it), releases their texts in order, and says which one is missing. The
coordinator assembles replies with it, and the webapp uses it to send each browser every
chunk once.
"""

from dataclasses import dataclass, field


@dataclass(slots=True)
class ChunkSequence:
    floor: int = -1  # every chunk up to this one has arrived (and been released)
    waiting: dict[int, str] = field(default_factory=dict)  # arrived above a gap

    @property
    def next_seq(self) -> int:
        """The first chunk not yet released."""
        return self.floor + 1

    def has(self, seq: int) -> bool:
        return seq <= self.floor or seq in self.waiting

    def add(self, seq: int, text: str = "") -> list[str] | None:
        """Take chunk ``seq``: None if it came before (a duplicate), else the texts it
        releases in order (itself and those that waited for it; none while a chunk
        before it is missing)."""
        if self.has(seq):
            return None
        self.waiting[seq] = text
        released: list[str] = []
        while self.floor + 1 in self.waiting:
            self.floor += 1
            released.append(self.waiting.pop(self.floor))
        return released

    def raise_floor(self, seq: int) -> None:
        """Chunks up to ``seq`` are accounted for elsewhere (a stored text holds them)."""
        if seq <= self.floor:
            return
        self.floor = seq
        self.waiting = {s: t for s, t in self.waiting.items() if s > seq}
        while self.floor + 1 in self.waiting:
            self.floor += 1
            del self.waiting[self.floor]

    def gap(self, expected: int | None = None) -> int | None:
        """The first missing chunk: later ones arrived before it, or fewer than
        ``expected`` (the total a *done* announced) have. None when nothing is missing."""
        if self.waiting or (expected is not None and self.next_seq < expected):
            return self.next_seq
        return None
