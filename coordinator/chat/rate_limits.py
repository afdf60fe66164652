"""Rate limits, as token buckets (the original's). Per user: sending a message (a retry
counts) 10 a minute with a burst of 3, starting a chat 1 a minute with a burst of 2,
joining a chat and picking a new name 1 a second each. Per client address: new identities
1 a minute with a burst of 50. A refusal says when the next one will be allowed.

The buckets live in this coordinator process; with several coordinators behind one
database each keeps its own, so a user's real allowance is that many times larger."""

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from coordinator.errors import CoordinatorError, RateLimited
from coordinator.settings import CoordinatorSettings


@dataclass(frozen=True, slots=True)
class Rule:
    per_minute: float
    burst: int
    refusal: str  # "you can {refusal} in N s"


class RateLimits:
    def __init__(self, rules: dict[str, Rule], clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules
        self.clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # -> (tokens, at)

    def take(self, action: str, who: str) -> None:
        """Spend one token of ``who``'s ``action`` bucket, or raise :class:`RateLimited`."""
        rule = self.rules[action]
        now = self.clock()
        tokens, at = self._buckets.get((action, who), (float(rule.burst), now))
        rate = rule.per_minute / 60.0
        tokens = min(float(rule.burst), tokens + (now - at) * rate)
        if tokens < 1.0:
            wait = math.ceil((1.0 - tokens) / rate)
            self._buckets[(action, who)] = (tokens, now)
            raise RateLimited(f"you can {rule.refusal} in {wait} s", wait)
        self._buckets[(action, who)] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:  # forget idle users rather than grow forever
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 600}

    @contextmanager
    def spend(self, action: str, who: str) -> Iterator[None]:
        """Take a token for what the block does; give it back if the block is refused for
        another reason (a :class:`CoordinatorError`: full thread, reply still running)."""
        self.take(action, who)
        try:
            yield
        except CoordinatorError:
            self.give_back(action, who)
            raise

    def give_back(self, action: str, who: str) -> None:
        """Return a token: the action it was taken for was refused for another reason."""
        rule = self.rules[action]
        tokens, at = self._buckets.get((action, who), (float(rule.burst), self.clock()))
        self._buckets[(action, who)] = (min(float(rule.burst), tokens + 1.0), at)


def default_rules(settings: CoordinatorSettings) -> dict[str, Rule]:
    return {
        "send": Rule(settings.rate_send_per_minute, 3, "send another message"),
        "thread": Rule(settings.rate_thread_per_minute, 2, "start another chat"),
        "join": Rule(settings.rate_join_per_minute, 1, "join another chat"),
        "rename": Rule(settings.rate_rename_per_minute, 1, "pick another name"),
        "new_user": Rule(settings.rate_new_user_per_minute, 50, "start another identity"),
    }
