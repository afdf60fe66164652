"""The databases a storage benchmark runs on, side by side: a fresh SQLite file, and, when
FARM_TEST_POSTGRES_URL is set, a scratch PostgreSQL database created and dropped for it."""

import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import peewee as pw

from coordinator.db.database import open_database

T = TypeVar("T")


def on_each_database(measure: Callable[[pw.Database], T]) -> list[tuple[str, T]]:
    """[(database name, what ``measure`` returned on it)], SQLite first."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(("SQLite (WAL)", measure(open_database(f"sqlite:///{Path(tmp) / 'b.db'}"))))
    url = os.environ.get("FARM_TEST_POSTGRES_URL")
    if url:
        admin = open_database(url)
        name = f"farm_bench_{uuid.uuid4().hex[:8]}"
        admin.execute_sql(f"CREATE DATABASE {name}")  # type: ignore[no-untyped-call]
        try:
            db = open_database(url.rsplit("/", 1)[0] + f"/{name}")
            results.append(("PostgreSQL", measure(db)))
            db.close()
        finally:
            admin.execute_sql(f"DROP DATABASE {name}")  # type: ignore[no-untyped-call]
            admin.close()
    return results
