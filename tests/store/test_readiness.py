"""A coordinator's health check says whether it can serve: its database answers and it
is connected to the broker; otherwise which of them it lacks."""

from pathlib import Path

from coordinator.db.database import migrate, open_database
from coordinator.db.runner import DbRunner
from coordinator.readiness import Readiness


async def test_a_coordinator_without_its_database_or_broker_cannot_serve(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'farm.sqlite3'}")
    migrate(db)
    ready = Readiness(DbRunner(db))
    assert await ready.problems() == ["not connected to the broker"]
    ready.broker.set()
    assert await ready.problems() == []

    gone = Readiness(DbRunner(open_database(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")))
    gone.broker.set()
    (problem,) = await gone.problems()
    assert problem.startswith("the database does not answer")
