"""Database URLs as an operator writes them: options in the query reach the driver, and a
password with reserved characters is percent-decoded."""

import os

import peewee as pw
import pytest

from coordinator.db.database import open_database


def test_options_and_escaped_passwords_reach_the_driver() -> None:
    db = open_database("postgresql://farm:p%40ss%2Fw0rd@db.internal:6432/llama?sslmode=require")
    assert isinstance(db, pw.PostgresqlDatabase)
    assert db.database == "llama"
    assert db.connect_params == {
        "user": "farm",
        "password": "p@ss/w0rd",
        "host": "db.internal",
        "port": 6432,
        "sslmode": "require",
    }
    assert open_database("postgresql:///").database == "postgres"
    with pytest.raises(ValueError, match="unsupported database URL"):
        open_database("mysql://x@y/z")


def test_sqlite_keeps_its_path() -> None:
    db = open_database("sqlite:////var/lib/llama-farm/farm.sqlite3")
    assert db.database == "/var/lib/llama-farm/farm.sqlite3"
    assert open_database("sqlite:///farm.sqlite3").database == "farm.sqlite3"


@pytest.mark.skipif(not os.environ.get("FARM_TEST_POSTGRES_URL"), reason="no PostgreSQL")
def test_a_query_option_is_applied_on_a_real_server() -> None:
    url = os.environ["FARM_TEST_POSTGRES_URL"]
    db = open_database(url + "?application_name=llama-farm-test&connect_timeout=5")
    try:
        (name,) = db.execute_sql("SHOW application_name").fetchone()  # type: ignore[no-untyped-call]
        assert name == "llama-farm-test"
    finally:
        db.close()
