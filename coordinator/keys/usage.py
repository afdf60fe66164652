"""What each API key used, per day (UTC): its replies and their tokens, from the jobs and
replies on record, so the figures hold across restarts and coordinators."""

import time
from dataclasses import dataclass

import peewee as pw

from coordinator.db import sql
from coordinator.jobs.states import JobState

_DAY = {
    "sqlite": "date(j.finished_at, 'unixepoch')",
    "postgresql": "to_char(to_timestamp(j.finished_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}
_USAGE = (
    "SELECT {day} AS day, COUNT(*), COALESCE(SUM(m.prompt_tokens), 0),"
    " COALESCE(SUM(m.completion_tokens), 0)"
    " FROM job j JOIN message m ON m.id = j.message_id"
    f" WHERE j.api_key_id = %s AND j.state = '{JobState.SUCCEEDED}' AND j.finished_at >= %s"
    " GROUP BY day ORDER BY day"
)


@dataclass(frozen=True, slots=True)
class DayUsage:
    day: str  # YYYY-MM-DD, UTC
    replies: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def key_usage(db: pw.Database, key_id: str, days: int) -> list[DayUsage]:
    """The key's replies that succeeded in the last ``days`` days (today included)."""
    today = int(time.time() // 86400) * 86400
    since = today - (days - 1) * 86400
    day = _DAY["sqlite" if sql.is_sqlite(db) else "postgresql"]
    rows = sql.execute(db, _USAGE.format(day=day), (key_id, since)).fetchall()
    return [DayUsage(str(d), int(n), int(p), int(c)) for d, n, p, c in rows]
