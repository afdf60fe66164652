"""Rate limits, as token buckets (the original's). Per user: sending a message (a retry
counts) 10 a minute with a burst of 3, starting a chat 1 a minute with a burst of 2,
joining a chat and picking a new name 1 a second each. Per client address: new identities
1 a minute with a burst of 50. A refusal says when the next one will be allowed.

The buckets are rows of the database (``rate_bucket``), spent in a transaction that locks
the row, so coordinators side by side spend from the same bucket: a user's allowance is
the same whichever of them serves each request (tests/store/test_limits_across_coordinators.py).
These methods are the database thread's (``DbRunner.call``)."""

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import peewee as pw

from coordinator.chat import statements as q
from coordinator.db import sql
from coordinator.db.database import write_transaction
from coordinator.db.runner import DbRunner
from coordinator.errors import CoordinatorError, RateLimited
from coordinator.settings import CoordinatorSettings

_FORGET_AFTER_S = 3600.0  # a bucket idle this long is full again: its row can go
_PRUNE_EVERY = 1000  # takes


@dataclass(frozen=True, slots=True)
class Rule:
    per_minute: float
    burst: int
    refusal: str  # "you can {refusal} in N s"


class RateLimits:
    def __init__(
        self, db: pw.Database, rules: dict[str, Rule], clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.rules = rules
        self.clock = clock
        self._takes = 0

    def take(self, action: str, who: str) -> None:
        """Spend one token of ``who``'s ``action`` bucket, or raise :class:`RateLimited`."""
        rule = self.rules[action]
        rate = rule.per_minute / 60.0
        who = who[:128]
        with write_transaction(self.db):
            now = self.clock()
            tokens = self._locked(action, who, rule, now)
            tokens = min(float(rule.burst), tokens)
            if tokens < 1.0:
                wait = math.ceil((1.0 - tokens) / rate)
                sql.execute(self.db, q.BUCKET_SET, (tokens, now, action, who))
                raise RateLimited(f"you can {rule.refusal} in {wait} s", wait)
            sql.execute(self.db, q.BUCKET_SET, (tokens - 1.0, now, action, who))
        self._takes += 1
        if self._takes % _PRUNE_EVERY == 0:
            sql.execute(self.db, q.BUCKETS_IDLE, (self.clock() - _FORGET_AFTER_S,))

    def give_back(self, action: str, who: str) -> None:
        """Return a token: the action it was taken for was refused for another reason."""
        rule = self.rules[action]
        who = who[:128]
        with write_transaction(self.db):
            now = self.clock()
            tokens = self._locked(action, who, rule, now)
            sql.execute(
                self.db, q.BUCKET_SET, (min(float(rule.burst), tokens + 1.0), now, action, who)
            )

    def _locked(self, action: str, who: str, rule: Rule, now: float) -> float:
        """The bucket's tokens now (refilled since it was last counted), its row locked
        until the transaction ends. A new bucket is made full first, so that two
        coordinators' first takes both find the row and wait for each other."""
        sql.execute(self.db, q.BUCKET_NEW, (action, who, float(rule.burst), now))
        row = sql.execute(self.db, q.BUCKET + sql.row_lock(self.db), (action, who)).fetchone()
        tokens, at = float(row[0]), float(row[1])
        return tokens + max(0.0, now - at) * rule.per_minute / 60.0


@asynccontextmanager
async def spending(
    runner: DbRunner, limits: RateLimits, action: str, who: str
) -> AsyncIterator[None]:
    """Take a token for what the block does; give it back if the block is refused for
    another reason (a :class:`CoordinatorError`: full thread, too many replies waiting)."""
    await runner.call(limits.take, action, who)
    try:
        yield
    except CoordinatorError:
        await runner.call(limits.give_back, action, who)
        raise


def default_rules(settings: CoordinatorSettings) -> dict[str, Rule]:
    return {
        "send": Rule(settings.rate_send_per_minute, 3, "send another message"),
        "thread": Rule(settings.rate_thread_per_minute, 2, "start another chat"),
        "join": Rule(settings.rate_join_per_minute, 1, "join another chat"),
        "rename": Rule(settings.rate_rename_per_minute, 1, "pick another name"),
        "new_user": Rule(settings.rate_new_user_per_minute, 50, "start another identity"),
    }
