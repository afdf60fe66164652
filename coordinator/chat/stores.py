"""The chat package's stores, built together on one database."""

from dataclasses import dataclass

import peewee as pw

from coordinator.chat.identity import IdentityStore
from coordinator.chat.requests import RequestStore
from coordinator.chat.threads import ThreadStore


@dataclass(frozen=True, slots=True)
class ChatStores:
    identity: IdentityStore
    threads: ThreadStore
    requests: RequestStore

    @classmethod
    def open(
        cls, db: pw.Database, *, grace_s: float = 10.0, key_backlog: int = 4, chat_backlog: int = 3
    ) -> "ChatStores":
        """``grace_s``: a worker silent this long is not online (FARM_WORKER_GRACE_S);
        ``key_backlog`` and ``chat_backlog``: see RequestStore."""
        requests = RequestStore(
            db, grace_s=grace_s, key_backlog=key_backlog, chat_backlog=chat_backlog
        )
        return cls(IdentityStore(db), ThreadStore(db), requests)
