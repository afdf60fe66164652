"""Enrolment tokens on SQLite and PostgreSQL: spent by their first use, refused once
expired or when their worker was revoked, and given back when the key could not be made."""

import peewee as pw
import pytest

from coordinator.db.tables import Enrolment
from coordinator.errors import NotFound
from coordinator.workers.enrolment import Enrolments
from coordinator.workers.registry import WorkerRegistry
from farm_protocol.joining import JoinLine


def test_a_token_works_once(db: pw.Database) -> None:
    info, _ = WorkerRegistry(db, grace_s=10).add("laptop A")
    tokens = Enrolments(db)
    token = tokens.issue(info.id)
    assert token not in str(list(Enrolment.select().tuples().execute(db)))  # only its hash
    assert tokens.redeem(token) == info.id
    with pytest.raises(NotFound, match="already used or expired"):
        tokens.redeem(token)
    tokens.give_back(token)  # its key could not be made: it may be tried again
    assert tokens.redeem(token) == info.id
    with pytest.raises(NotFound):
        tokens.redeem("lfe_" + "x" * 32)


def test_an_expired_token_or_a_revoked_worker_is_refused(db: pw.Database) -> None:
    registry = WorkerRegistry(db, grace_s=10)
    info, _ = registry.add("laptop B")
    expired = Enrolments(db, ttl_s=-1).issue(info.id)  # made expired
    with pytest.raises(NotFound, match="expired"):
        Enrolments(db).redeem(expired)
    fresh = Enrolments(db).issue(info.id)
    registry.revoke(info.id)
    with pytest.raises(NotFound, match="revoked"):
        Enrolments(db).redeem(fresh)


def test_the_join_line_says_only_what_it_must() -> None:
    line = JoinLine(
        broker="mqtts://farm.example.org:8883",
        farm="https://chat.example.org",
        token="lfe_" + "t" * 32,
    )
    text = line.encode()
    assert text.startswith("lfj1_")
    assert " " not in text
    assert JoinLine.decode(f"  {text}\n") == line
    with pytest.raises(ValueError, match="starts with lfj1_"):
        JoinLine.decode("lf_key")
    with pytest.raises(ValueError, match="damaged"):
        JoinLine.decode(text[:-10])
