"""The order in which queued jobs are served: round-robin between their owners.

An owner is a chat user or an API key. Each owner's jobs keep their own order (oldest
first), and owners take turns: every owner's first waiting job comes before any owner's
second, and an owner who already has jobs running waits behind those who have none. So a
client that queues a hundred jobs delays a newcomer by at most one job per worker slot,
not by a hundred.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueuedJob:
    id: str
    model: str
    created_at: float
    owner: str  # the API key, else the user
    avoid_worker: str | None = None  # the worker the previous attempt failed on
    # the most the owner may have running at once (an API key's concurrency; a chat
    # user's is 1)
    cap: int | None = None


def fair_order(jobs: Iterable[QueuedJob], running: Mapping[str, int]) -> list[QueuedJob]:
    """``jobs`` in serving order; ``running`` counts each owner's jobs already held."""
    seen: dict[str, int] = {}
    ranked: list[tuple[int, float, str, QueuedJob]] = []
    for job in sorted(jobs, key=lambda j: (j.created_at, j.id)):
        turn = seen.get(job.owner, running.get(job.owner, 0))
        seen[job.owner] = turn + 1
        ranked.append((turn, job.created_at, job.id, job))
    ranked.sort(key=lambda r: r[:3])
    return [r[3] for r in ranked]


def startable(order: Sequence[QueuedJob], running: Mapping[str, int]) -> list[QueuedJob]:
    """The jobs of ``order`` that may start now: an owner with a cap (an API key's
    concurrency, a chat user's one) gets at most that many running; the rest of its jobs
    wait their turn."""
    room: dict[str, int] = {}
    out = []
    for job in order:
        if job.cap is None:
            out.append(job)
            continue
        left = room.setdefault(job.owner, job.cap - running.get(job.owner, 0))
        if left > 0:
            room[job.owner] = left - 1
            out.append(job)
    return out


def positions(order: Sequence[QueuedJob]) -> dict[str, int]:
    """Each job's place in the queue, 1 for the next to be served."""
    return {job.id: i for i, job in enumerate(order, start=1)}
