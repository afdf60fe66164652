"""Shared fixtures. Brokers, databases and HTTP are real; only the LLM is simulated."""

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import peewee as pw
import pytest

from coordinator.db.database import migrate, open_database
from tests.support.brokers import RunningBroker, broker_of

POSTGRES_URL = os.environ.get("FARM_TEST_POSTGRES_URL")


@pytest.fixture(params=["mosquitto", "amqtt"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[RunningBroker]:
    """Each test that takes ``broker`` runs on a real Mosquitto and on the embedded amqtt."""
    async with broker_of(request.param) as running:
        yield running


@contextmanager
def scratch_database_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """A new, empty database: a SQLite file, or a PostgreSQL database dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'farm.sqlite3'}"
        return
    if not POSTGRES_URL:
        pytest.skip("FARM_TEST_POSTGRES_URL is not set")
    admin = open_database(POSTGRES_URL)
    name = f"farm_test_{uuid.uuid4().hex[:10]}"
    admin.execute_sql(f"CREATE DATABASE {name}")  # type: ignore[no-untyped-call]
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute_sql(f"DROP DATABASE {name} WITH (FORCE)")  # type: ignore[no-untyped-call]
        admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on SQLite, and on PostgreSQL when FARM_TEST_POSTGRES_URL is set."""
    with scratch_database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def db(db_url: str) -> Iterator[pw.Database]:
    """A migrated database on each backend."""
    database = open_database(db_url)
    migrate(database)
    yield database
    database.close()


TIERS = {
    "unit": "pure logic, in memory: seconds",
    "store": "real SQLite and PostgreSQL files and servers, no broker",
    "farm": "a real broker, and services in-process or as processes",
    "browser": "a real headless Chromium against a running farm",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked with its tier, the folder it lives in (tests/unit, ...), so
    that ``pytest -m unit`` runs the fast ones alone."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
